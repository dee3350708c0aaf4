"""Static checks of an exported graph against a TensorRT profile, without TensorRT (no torch).

What can be known here is checked here: the ONNX checker, the opset the parser reads, every
operator on the profile's list, static shapes on the inputs, the outputs and, after ONNX shape
inference, every intermediate value, and in INT8 graphs the Q/DQ rules of TensorRT's explicit
quantization (`qdq_problems`).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import onnx
from onnx import helper, numpy_helper

from panda_edge.backends import TrtTarget, trt_target

_DEFAULT_DOMAINS = ("", "ai.onnx")
_SHOWN = 5


def check_onnx(path: str | Path, profile: TrtTarget | str) -> list[str]:
    """Problems that would stop or change a TensorRT build for `profile`; empty means ok."""
    profile = trt_target(profile) if isinstance(profile, str) else profile
    try:
        model = onnx.load(str(path))
    except Exception as exc:  # onnx raises DecodeError, OSError, ...
        return [f"{path}: not a readable ONNX file ({_first_line(exc)})"]
    problems: list[str] = []
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        problems.append(f"ONNX checker: {_first_line(exc)}")
    problems += _opset_problems(model, profile)
    problems += _operator_problems(model, profile)
    problems += _io_problems(model)
    problems += _intermediate_shape_problems(model)
    problems += qdq_problems(model)
    return problems


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _opset_problems(model: onnx.ModelProto, profile: TrtTarget) -> list[str]:
    problems = []
    for entry in model.opset_import:
        if entry.domain not in _DEFAULT_DOMAINS:
            problems.append(f"operator domain '{entry.domain}' needs a TensorRT plugin")
        elif entry.version > profile.max_opset:
            problems.append(
                f"opset {entry.version} is above {profile.max_opset}, the highest TensorRT "
                f"{profile.tensorrt} reads (profile {profile.profile})"
            )
    return problems


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _all_nodes(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _all_nodes(sub)


def _operator_problems(model: onnx.ModelProto, profile: TrtTarget) -> list[str]:
    counts = Counter(node.op_type for node in _all_nodes(model.graph))
    return [
        f"operator {op} ({counts[op]} node{'s' if counts[op] > 1 else ''}) is not on the TensorRT "
        f"{profile.tensorrt} list of profile {profile.profile}"
        for op in sorted(set(counts) - profile.allowed_ops)
    ]


def _dims(value: onnx.ValueInfoProto) -> list[str] | None:
    """Each dim as text when any is not a fixed positive size; None when all are static."""
    if not value.type.HasField("tensor_type") or not value.type.tensor_type.HasField("shape"):
        return ["unknown rank"]
    dims = value.type.tensor_type.shape.dim
    if all(d.HasField("dim_value") and d.dim_value > 0 for d in dims):
        return None
    return [str(d.dim_value) if d.HasField("dim_value") else (d.dim_param or "?") for d in dims]


def _io_problems(model: onnx.ModelProto) -> list[str]:
    initializers = {i.name for i in model.graph.initializer}
    problems = []
    for kind, values in (("input", model.graph.input), ("output", model.graph.output)):
        for value in values:
            if value.name in initializers:
                continue
            dims = _dims(value)
            if dims is not None:
                problems.append(f"{kind} '{value.name}' has a dynamic shape ({', '.join(dims)})")
    return problems


def _intermediate_shape_problems(model: onnx.ModelProto) -> list[str]:
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=True, data_prop=True)
    except Exception as exc:  # InferenceError, or a model too large to infer in memory
        return [f"ONNX shape inference failed: {_first_line(exc)}"]
    known = {v.name: v for v in [*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input]}
    known_names = set(known) | {i.name for i in inferred.graph.initializer}
    unknown = [o for n in inferred.graph.node for o in n.output if o and o not in known_names]
    dynamic = [f"{name} ({', '.join(d)})" for name, v in known.items() if (d := _dims(v)) is not None]
    problems = []
    for label, names in (("no inferred shape", unknown), ("a non-static shape", dynamic)):
        if names:
            shown = "; ".join(names[:_SHOWN]) + (
                f" and {len(names) - _SHOWN} more" if len(names) > _SHOWN else ""
            )
            problems.append(f"{len(names)} intermediate value(s) with {label}: {shown}")
    return problems


# --- INT8: Q/DQ rules ---------------------------------------------------------------------------------

_QDQ = ("QuantizeLinear", "DequantizeLinear")
_QUANTIZED_OPS = ("Conv", "MatMul", "Gemm")


def weight_channel_axis(node: onnx.NodeProto, rank: int) -> int | None:
    """The axis of a Conv / MatMul / Gemm weight that holds its output channels (None: no such axis).

    Conv weights are (out, in, k...); a 2-D MatMul weight is (K, N); Gemm's follows transB.
    """
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if node.op_type == "Conv":
        return 0
    if rank != 2 or attrs.get("transA", 0):
        return None
    if node.op_type == "MatMul":
        return 1
    return 0 if attrs.get("transB", 0) else 1


def qdq_problems(model: onnx.ModelProto, tensorrt: bool = True) -> list[str]:
    """What in a Q/DQ graph breaks the INT8 rules (docs/design.md §4); empty for a graph without Q/DQ.

    Always: scales are positive constants; each QuantizeLinear feeds DequantizeLinear only; activations
    per-tensor; weights int8, zero point 0, per output channel; no Q/DQ on a bias; a quantized Conv /
    MatMul / Gemm has both inputs quantized. With `tensorrt`: activations int8 with zero point 0
    (symmetric), as TensorRT takes them; the ONNX Runtime CPU form uses uint8 activations instead.
    """
    graph = model.graph
    if not any(n.op_type in _QDQ for n in graph.node):
        return []
    constants = {i.name: i for i in graph.initializer}
    for node in graph.node:
        if (
            node.op_type == "Constant"
            and node.attribute
            and node.attribute[0].type == onnx.AttributeProto.TENSOR
        ):
            constants[node.output[0]] = node.attribute[0].t
    producer = {o: n for n in graph.node for o in n.output}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for node in graph.node:
        for name in node.input:
            consumers.setdefault(name, []).append(node)
    problems: list[str] = []
    for node in graph.node:
        if node.op_type in _QDQ:
            problems += _qdq_node_problems(node, constants, consumers, tensorrt)
        elif node.op_type in _QUANTIZED_OPS:
            problems += _quantized_op_problems(node, constants, producer)
    return _summarize(problems)


def _array(constants: dict[str, onnx.TensorProto], name: str) -> np.ndarray | None:
    return numpy_helper.to_array(constants[name]) if name in constants else None


def _qdq_node_problems(
    node: onnx.NodeProto,
    constants: dict[str, onnx.TensorProto],
    consumers: dict[str, list[onnx.NodeProto]],
    tensorrt: bool,
) -> list[str]:
    label = f"{node.op_type} '{node.name}'"
    scale = _array(constants, node.input[1])
    zero = _array(constants, node.input[2]) if len(node.input) > 2 and node.input[2] else None
    weight = node.op_type == "DequantizeLinear" and node.input[0] in constants
    problems = []
    if scale is None or not np.all(scale > 0):
        problems.append(f"{label}: the scale must be a positive constant")
    if len(node.input) > 2 and node.input[2] and zero is None:
        problems.append(f"{label}: the zero point must be a constant")
    if node.op_type == "QuantizeLinear":
        others = [c.op_type for c in consumers.get(node.output[0], []) if c.op_type != "DequantizeLinear"]
        if others:
            problems.append(f"{label} feeds {', '.join(others)}; TensorRT needs a DequantizeLinear after it")
    if weight:
        values = _array(constants, node.input[0])
        if values.dtype != np.int8 or (zero is not None and np.any(zero != 0)):
            problems.append(f"{label}: weights must be int8 with zero point 0 (symmetric)")
    else:
        if scale is not None and scale.size != 1:
            problems.append(f"{label}: activations must be quantized per tensor")
        if tensorrt and zero is not None and (zero.dtype != np.int8 or np.any(zero != 0)):
            problems.append(
                f"{label}: TensorRT takes int8 activations with zero point 0 (got {zero.dtype}, "
                f"zero point {zero.ravel()[:1].tolist()})"
            )
    return problems


def _quantized_op_problems(
    node: onnx.NodeProto, constants: dict[str, onnx.TensorProto], producer: dict[str, onnx.NodeProto]
) -> list[str]:
    label = f"{node.op_type} '{node.name}'"
    sources = [producer.get(name) for name in node.input]
    dequantized = [s is not None and s.op_type == "DequantizeLinear" for s in sources]
    if not any(dequantized):
        return []
    problems = []
    if len(dequantized) > 2 and dequantized[2]:
        problems.append(f"{label}: its bias is quantized; TensorRT wants the bias in float")
    if len(dequantized) < 2 or not (dequantized[0] and dequantized[1]):
        problems.append(f"{label}: only some of its inputs are quantized; quantize the input and the weight")
        return problems
    dq = sources[1]
    weight = _array(constants, dq.input[0])
    if weight is None:
        return problems
    axis = weight_channel_axis(node, weight.ndim)
    scale = _array(constants, dq.input[1])
    attrs = {a.name: helper.get_attribute_value(a) for a in dq.attribute}
    given = attrs.get("axis", 1) % weight.ndim
    if axis is None or scale is None or scale.size != weight.shape[axis] or given != axis:
        problems.append(
            f"{label}: weights must be quantized per output channel (axis {axis}); "
            f"got {scale.size if scale is not None else '?'} scale(s) on axis {given}"
        )
    return problems


def _summarize(problems: list[str]) -> list[str]:
    """At most `_SHOWN` problems of one kind per line, so a systematic fault stays readable."""
    if len(problems) <= _SHOWN:
        return problems
    return [*problems[:_SHOWN], f"... and {len(problems) - _SHOWN} more Q/DQ problems"]
