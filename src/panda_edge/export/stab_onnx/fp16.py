"""The fp32 STAB graph as a mixed fp16 graph, for strongly typed TensorRT builds (no torch).

TensorRT 11 has no FP16 builder flag, and a strongly typed TensorRT 10 network takes every tensor's
type from the graph, so an fp16 engine needs fp16 in the ONNX itself (what NVIDIA's ModelOpt
AutoCast produces). The rules, chosen for this graph:

- float initializers and `Constant`s become fp16; finite values beyond fp16's range are clipped
  to +-65504 (so a large mask fill stays finite), infinities stay infinities;
- `Cast(to=FLOAT)` becomes `Cast(to=FLOAT16)`;
- `LayerNormalization` runs in float32 between two Casts, with its scale and bias kept float32:
  the variance of a 1024-wide row is where fp16 overflows first, and the op is cheap;
- the graph input and output stay float32 (a Cast after the input, one before the output), so a
  runtime feeds and reads the same arrays for the fp32 and the fp16 graph.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

FP32_OPS = frozenset({"LayerNormalization"})
FP16_MAX = float(np.finfo(np.float16).max)


def to_fp16(model: onnx.ModelProto, keep_fp32: frozenset[str] = FP32_OPS) -> onnx.ModelProto:
    """A converted copy of `model` (one input, one output, both float32); `model` is unchanged."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    graph = model.graph
    if len(graph.input) != 1 or len(graph.output) != 1:
        raise ValueError("expected a graph with one input and one output")
    kept_inputs = {name for node in graph.node if node.op_type in keep_fp32 for name in node.input[1:]}
    for init in graph.initializer:
        if init.data_type == TensorProto.FLOAT and init.name not in kept_inputs:
            init.CopyFrom(_fp16_tensor(init))
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        if node.op_type == "Constant" and node.output[0] not in kept_inputs:
            _constant_to_fp16(node)
        elif node.op_type == "Cast":
            for attr in node.attribute:
                if attr.name == "to" and attr.i == TensorProto.FLOAT:
                    attr.i = TensorProto.FLOAT16
        if node.op_type in keep_fp32:
            nodes += _wrap_fp32(node)
        else:
            nodes.append(node)
    _cast_io(graph, nodes)
    del graph.value_info[:]  # their element types are stale; shape inference rebuilds them
    return model


def convert_file(source: str | Path, target: str | Path) -> None:
    """Read the fp32 graph at `source`, write the fp16 graph to `target` (metadata kept)."""
    model = to_fp16(onnx.load(str(source)))
    onnx.save(model, str(target))


def _fp16_tensor(tensor: onnx.TensorProto) -> onnx.TensorProto:
    values = numpy_helper.to_array(tensor)
    finite = np.isfinite(values)
    clipped = np.where(finite, np.clip(values, -FP16_MAX, FP16_MAX), values)
    return numpy_helper.from_array(clipped.astype(np.float16), tensor.name)


def _constant_to_fp16(node: onnx.NodeProto) -> None:
    for attr in node.attribute:
        if attr.name == "value" and attr.t.data_type == TensorProto.FLOAT:
            attr.t.CopyFrom(_fp16_tensor(attr.t))
        elif attr.name in ("value_float", "value_floats"):
            raise ValueError(f"Constant '{node.name}' uses {attr.name}; export with tensor constants")


def _wrap_fp32(node: onnx.NodeProto) -> list[onnx.NodeProto]:
    """[Cast to fp32] node [Cast to fp16], for the node's first input and its outputs."""
    base = node.name or node.output[0]
    x32 = f"{base}/input_fp32"
    before = helper.make_node("Cast", [node.input[0]], [x32], name=f"{base}/to_fp32", to=TensorProto.FLOAT)
    node.input[0] = x32
    after = []
    for i, name in enumerate(node.output):
        if not name:
            continue
        y32 = f"{base}/output{i}_fp32"
        node.output[i] = y32
        after.append(
            helper.make_node("Cast", [y32], [name], name=f"{base}/to_fp16_{i}", to=TensorProto.FLOAT16)
        )
    return [before, node, *after]


def _cast_io(graph: onnx.GraphProto, nodes: list[onnx.NodeProto]) -> None:
    """Keep the float32 interface: Cast the input to fp16 first, the output back to float32 last."""
    inp, out = graph.input[0].name, graph.output[0].name
    inp16, out16 = f"{inp}_fp16", f"{out}_fp16"
    for node in nodes:
        for i, name in enumerate(node.input):
            if name == inp:
                node.input[i] = inp16
        for i, name in enumerate(node.output):
            if name == out:
                node.output[i] = out16
    first = helper.make_node("Cast", [inp], [inp16], name="input_to_fp16", to=TensorProto.FLOAT16)
    last = helper.make_node("Cast", [out16], [out], name="output_to_fp32", to=TensorProto.FLOAT)
    del graph.node[:]
    graph.node.extend([first, *nodes, last])
