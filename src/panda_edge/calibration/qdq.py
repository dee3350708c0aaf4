"""Q/DQ insertion: one calibration's activation ranges -> the TensorRT form or the ONNX Runtime CPU form.

Both forms quantize the same nodes (Conv, MatMul and Gemm with a constant weight) from the same
ranges; bias inputs stay float in both (TensorRT wants them so, and ONNX Runtime adds them in float).

- `TENSORRT`: int8 activations, symmetric (zero point 0, scale = amax / 127); int8 symmetric
  per-output-channel weights; Q/DQ only on the inputs of the quantized nodes, so residual adds and
  LayerNorms stay float and TensorRT fuses each DQ -> op into an int8 kernel (docs/design.md §4).
- `CPU` (U8S8): uint8 asymmetric activations; int8 per-channel weights in 7 bits (-63..63): on x86
  without VNNI, MLAS sums pairs of u8 x s8 products in 16 bits with saturation (vpmaddubsw), and
  2 x 255 x 63 < 32767 cannot saturate (with 8-bit weights the tiny model's worst token fell to
  cosine 0.81 on this AVX2 CPU). The outputs are quantized too: only DQ -> op -> Q becomes
  QLinearConv / QLinearMatMul / QGemm in ONNX Runtime; without the Q it runs float kernels.

MatMuls of two activations (attention scores) are not quantized: they are small and sensitive.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from panda_edge.export.stab_onnx.check import weight_channel_axis

PRECISION_KEY = "panda_edge.precision"
FORM_KEY = "panda_edge.int8_form"
MIN_OPSET = 13  # per-axis QuantizeLinear / DequantizeLinear


@dataclass(frozen=True)
class QdqForm:
    name: str
    activation_dtype: type  # np.int8 (symmetric) or np.uint8 (asymmetric)
    weight_max: int  # symmetric weights in [-weight_max, weight_max]
    quantize_outputs: bool

    @property
    def symmetric_activations(self) -> bool:
        return self.activation_dtype is np.int8


TENSORRT = QdqForm("tensorrt", np.int8, 127, quantize_outputs=False)
CPU = QdqForm("cpu", np.uint8, 63, quantize_outputs=True)
FORMS = {f.name: f for f in (TENSORRT, CPU)}

Ranges = Mapping[str, tuple[float, float]]


@dataclass(frozen=True)
class QuantNode:
    """A node INT8 can take: its activation input, its constant weight and that weight's channel axis."""

    name: str
    op_type: str
    activation: str
    weight: str
    axis: int
    output: str


def quantizable_nodes(model: onnx.ModelProto) -> list[QuantNode]:
    """Conv / MatMul / Gemm nodes whose weight is a float initializer, in graph order."""
    weights = {i.name: i for i in model.graph.initializer if i.data_type == TensorProto.FLOAT}
    found = []
    for node in model.graph.node:
        if node.op_type not in ("Conv", "MatMul", "Gemm") or len(node.input) < 2:
            continue
        activation, weight = node.input[0], node.input[1]
        if weight not in weights or activation in weights:
            continue
        axis = weight_channel_axis(node, len(weights[weight].dims))
        if axis is not None:
            found.append(
                QuantNode(node.name or node.output[0], node.op_type, activation, weight, axis, node.output[0])
            )
    return found


def quantize_weight(weight: np.ndarray, axis: int, weight_max: int) -> tuple[np.ndarray, np.ndarray]:
    """Symmetric per-channel: (int8 values, float32 scale per channel); an all-zero channel gets scale 1."""
    w = np.asarray(weight, np.float32)
    other = tuple(i for i in range(w.ndim) if i != axis)
    amax = np.abs(w).max(axis=other)
    scale = np.where(amax > 0, amax / weight_max, 1.0).astype(np.float32)
    shape = [1] * w.ndim
    shape[axis] = -1
    q = np.clip(np.rint(w / scale.reshape(shape)), -weight_max, weight_max).astype(np.int8)
    return q, scale


def activation_params(low: float, high: float, form: QdqForm) -> tuple[np.float32, np.integer]:
    """Per-tensor (scale, zero point) of an activation with calibrated range [low, high]."""
    if form.symmetric_activations:
        amax = max(abs(float(low)), abs(float(high)))
        return np.float32(amax / 127 if amax > 0 else 1.0), np.int8(0)
    low, high = min(float(low), 0.0), max(float(high), 0.0)
    scale = (high - low) / 255 if high > low else 1.0
    return np.float32(scale), np.uint8(np.clip(np.rint(-low / scale), 0, 255))


class QdqWriter:
    """Writes quantized copies of one fp32 graph; weights are quantized once per form and reused."""

    def __init__(self, model: onnx.ModelProto, ranges: Ranges) -> None:
        opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
        if opset < MIN_OPSET:
            raise ValueError(f"opset {opset}: per-channel Q/DQ needs opset {MIN_OPSET} or later")
        self.model = model
        self.ranges = ranges
        self.nodes = {n.name: n for n in quantizable_nodes(model)}
        self._initializers = {i.name: i for i in model.graph.initializer}
        self._weights: dict[tuple[str, int], list[TensorProto]] = {}

    def write(self, quantize: Collection[str], form: QdqForm) -> onnx.ModelProto:
        """A copy of the graph with `quantize` (node names from `self.nodes`) in INT8 of `form`."""
        unknown = sorted(set(quantize) - set(self.nodes))
        if unknown:
            raise ValueError(f"not quantizable nodes: {', '.join(unknown[:5])}")
        chosen = {name: self.nodes[name] for name in quantize}
        outputs = {o.name for o in self.model.graph.output}
        new_weights = {n.weight for n in chosen.values()}
        still_float = {
            i
            for node in self.model.graph.node
            if (node.name or node.output[0]) not in chosen
            for i in node.input
        }
        graph_nodes: list[onnx.NodeProto] = []
        initializers: list[TensorProto] = []
        rename: dict[str, str] = {}  # tensor -> its DQ output, for output-quantized tensors
        activation_dq: dict[str, str] = {}
        weight_dq: dict[str, str] = {}
        for node in self.model.graph.node:
            inputs = [rename.get(i, i) for i in node.input]
            entry = chosen.get(node.name or node.output[0])
            if entry is not None:
                if entry.activation not in rename:
                    if entry.activation not in activation_dq:
                        activation_dq[entry.activation] = self._activation_qdq(
                            entry.activation, form, graph_nodes, initializers
                        )
                    inputs[0] = activation_dq[entry.activation]
                if entry.weight not in weight_dq:
                    weight_dq[entry.weight] = self._weight_dq(entry, form, graph_nodes, initializers)
                inputs[1] = weight_dq[entry.weight]
            copy = onnx.NodeProto()
            copy.CopyFrom(node)
            del copy.input[:]
            copy.input.extend(inputs)
            graph_nodes.append(copy)
            if entry is not None and form.quantize_outputs and entry.output not in outputs:
                rename[entry.output] = self._activation_qdq(entry.output, form, graph_nodes, initializers)
        kept = [i for i in self.model.graph.initializer if i.name not in new_weights or i.name in still_float]
        return self._assemble(graph_nodes, kept + initializers, form, len(chosen))

    def _activation_qdq(
        self, tensor: str, form: QdqForm, nodes: list[onnx.NodeProto], initializers: list[TensorProto]
    ) -> str:
        if tensor not in self.ranges:
            raise ValueError(f"no calibrated range for '{tensor}'")
        scale, zero = activation_params(*self.ranges[tensor], form)
        s, z, q, dq = (f"{tensor}_{suffix}" for suffix in ("scale", "zero_point", "quantized", "dequantized"))
        initializers += [
            numpy_helper.from_array(np.array(scale), s),
            numpy_helper.from_array(np.array(zero), z),
        ]
        nodes.append(helper.make_node("QuantizeLinear", [tensor, s, z], [q], name=f"{tensor}_QuantizeLinear"))
        nodes.append(helper.make_node("DequantizeLinear", [q, s, z], [dq], name=f"{tensor}_DequantizeLinear"))
        return dq

    def _weight_dq(
        self, entry: QuantNode, form: QdqForm, nodes: list[onnx.NodeProto], initializers: list[TensorProto]
    ) -> str:
        key = (entry.weight, form.weight_max)
        if key not in self._weights:
            values, scale = quantize_weight(
                numpy_helper.to_array(self._initializers[entry.weight]), entry.axis, form.weight_max
            )
            self._weights[key] = [
                numpy_helper.from_array(values, f"{entry.weight}_quantized"),
                numpy_helper.from_array(scale, f"{entry.weight}_scale"),
                numpy_helper.from_array(np.zeros(scale.shape, np.int8), f"{entry.weight}_zero_point"),
            ]
        q, s, z = self._weights[key]
        initializers += [q, s, z]
        dq = f"{entry.weight}_dequantized"
        nodes.append(
            helper.make_node(
                "DequantizeLinear",
                [q.name, s.name, z.name],
                [dq],
                name=f"{entry.weight}_DequantizeLinear",
                axis=entry.axis,
            )
        )
        return dq

    def _assemble(
        self, nodes: list[onnx.NodeProto], initializers: list[TensorProto], form: QdqForm, count: int
    ) -> onnx.ModelProto:
        source = self.model
        graph = helper.make_graph(
            nodes,
            source.graph.name,
            list(source.graph.input),
            list(source.graph.output),
            initializer=initializers,
            value_info=list(source.graph.value_info),
        )
        model = helper.make_model(
            graph, opset_imports=list(source.opset_import), ir_version=source.ir_version
        )
        model.producer_name, model.producer_version = source.producer_name, source.producer_version
        props = {p.key: p.value for p in source.metadata_props}
        props.update({PRECISION_KEY: "int8", FORM_KEY: form.name, "panda_edge.int8_nodes": str(count)})
        helper.set_model_props(model, props)
        return model
