"""TensorRT target profiles for the STAB graph: data only (opset, allowed ONNX operators).

The operator lists are the rows of onnx-tensorrt's `docs/operators.md` (8.5 GA and 10.x) that a
STAB + projector graph can contain; anything else in an exported graph is a problem to look at
before building on a device. TensorRT 8.5 has no `LayerNormalization` (added in 8.6), so that
profile decomposes LayerNorm into primitive ops; TensorRT 10 parses opsets 9-20.
"""

from __future__ import annotations

from dataclasses import dataclass

from panda_edge.errors import PandaError

# The operators our exported STAB + projector graphs contain, each supported by TensorRT 8.5 in
# onnx-tensorrt's docs/operators.md at its 8.5 GA release (FP32 here; Equal on FP32, Not and the
# Where condition on BOOL; QuantizeLinear / DequantizeLinear on INT8, per-tensor or per-axis, in the
# INT8 graphs). A new operator in an export is reported until it is checked and added.
_COMMON_OPS = frozenset(
    {
        "Add",
        "AveragePool",
        "Cast",
        "Concat",
        "Constant",
        "Conv",
        "DequantizeLinear",
        "Div",
        "Equal",
        "Erf",
        "Flatten",
        "Gather",
        "Gemm",
        "Greater",
        "MatMul",
        "Mul",
        "Not",
        "Pow",
        "QuantizeLinear",
        "ReduceMax",
        "ReduceMean",
        "ReduceMin",
        "ReduceSum",
        "Reshape",
        "Shape",
        "Sigmoid",
        "Slice",
        "Softmax",
        "Split",
        "Sqrt",
        "Squeeze",
        "Sub",
        "Transpose",
        "Unsqueeze",
        "Where",
    }
)


@dataclass(frozen=True)
class Profile:
    """What one TensorRT version parses: the graph is exported and checked against this."""

    name: str
    tensorrt: str
    platform: str
    opset: int  # the opset we export with
    max_opset: int  # the highest the parser reads
    layer_norm_op: bool  # False: LayerNorm is decomposed into ReduceMean/Sub/Mul/Sqrt/Div/Add
    allowed_ops: frozenset[str]


PROFILES: dict[str, Profile] = {
    "8.5": Profile(
        name="8.5",
        tensorrt="8.5",
        platform="JetPack 5",
        opset=17,
        max_opset=17,
        layer_norm_op=False,
        allowed_ops=_COMMON_OPS,
    ),
    "10": Profile(
        name="10",
        tensorrt="10.3",
        platform="JetPack 6",
        opset=17,
        max_opset=17,
        layer_norm_op=True,
        allowed_ops=_COMMON_OPS | {"LayerNormalization"},
    ),
    # 20 is the newest opset the TorchScript exporter writes; TensorRT 10.0+ already parses it.
    "11": Profile(
        name="11",
        tensorrt="11",
        platform="desktop / TensorRT 11",
        opset=20,
        max_opset=20,
        layer_norm_op=True,
        allowed_ops=_COMMON_OPS | {"LayerNormalization", "Gelu"},
    ),
}
DEFAULT_PROFILE = "11"


def get_profile(name: str) -> Profile:
    try:
        return PROFILES[str(name)]
    except KeyError:
        raise PandaError(f"unknown TensorRT profile '{name}'; choose one of: {', '.join(PROFILES)}") from None
