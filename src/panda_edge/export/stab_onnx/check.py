"""Static checks of an exported graph against a TensorRT profile, without TensorRT (no torch).

What can be known here is checked here: the ONNX checker, the opset the parser reads, every
operator on the profile's list, and static shapes on the inputs, the outputs and, after ONNX shape
inference, every intermediate value.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import onnx

from panda_edge.export.stab_onnx.profiles import Profile, get_profile

_DEFAULT_DOMAINS = ("", "ai.onnx")
_SHOWN = 5


def check_onnx(path: str | Path, profile: Profile | str) -> list[str]:
    """Problems that would stop or change a TensorRT build for `profile`; empty means ok."""
    profile = get_profile(profile) if isinstance(profile, str) else profile
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
    return problems


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def _opset_problems(model: onnx.ModelProto, profile: Profile) -> list[str]:
    problems = []
    for entry in model.opset_import:
        if entry.domain not in _DEFAULT_DOMAINS:
            problems.append(f"operator domain '{entry.domain}' needs a TensorRT plugin")
        elif entry.version > profile.max_opset:
            problems.append(
                f"opset {entry.version} is above {profile.max_opset}, the highest TensorRT "
                f"{profile.tensorrt} reads (profile {profile.name})"
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


def _operator_problems(model: onnx.ModelProto, profile: Profile) -> list[str]:
    counts = Counter(node.op_type for node in _all_nodes(model.graph))
    return [
        f"operator {op} ({counts[op]} node{'s' if counts[op] > 1 else ''}) is not on the TensorRT "
        f"{profile.tensorrt} list of profile {profile.name}"
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
