"""Backend facts, data only, as gguf-py's `constants.py`: GGUF types, KV cache types, vision backends
and their precisions, TensorRT targets (no torch, no backend package).

Each fact is written here once; export, plan, the runtime and the CLI's choices and help texts read
it, so `panda plan` cannot plan what `panda run` refuses. tests/test_tables.py fails when a table's
names are spelled out again elsewhere in src.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from panda_edge.errors import PandaError

# --- GGUF types (`--gguf-type`) ---------------------------------------------------------------------


@dataclass(frozen=True)
class GgufType:
    """One `--gguf-type`: what its 2-D weights are stored as, and who writes them."""

    name: str
    weights: str  # ggml type of the 2-D weights (a GGMLQuantizationType name; K-quants: the main one)
    file_type: str  # gguf-py LlamaFileType member written as general.file_type
    llama_ftype: str | None = None  # K-quants: llama.cpp's quantizer constant, applied to an f16 file

    @property
    def kquant(self) -> bool:
        """Quantized by llama.cpp (llama-cpp-python needed), not written by gguf-py."""
        return self.llama_ftype is not None


GGUF_TYPES: dict[str, GgufType] = {
    t.name: t
    for t in (
        GgufType("f32", "F32", "ALL_F32"),
        GgufType("f16", "F16", "MOSTLY_F16"),
        GgufType("bf16", "BF16", "MOSTLY_BF16"),
        GgufType("q8_0", "Q8_0", "MOSTLY_Q8_0"),
        GgufType("q4_k_m", "Q4_K", "MOSTLY_Q4_K_M", "LLAMA_FTYPE_MOSTLY_Q4_K_M"),
        GgufType("q5_k_m", "Q5_K", "MOSTLY_Q5_K_M", "LLAMA_FTYPE_MOSTLY_Q5_K_M"),
    )
}
DEFAULT_GGUF_TYPE = "f16"  # what `panda export --target gguf` writes when none is asked
KQUANT_SOURCE = "f16"  # K-quants start from this type; llama.cpp requantizes it
# The runtime's pick when a bundle holds several types and none is asked: q8_0 is near f16 at half the size.
GGUF_PREFERENCE = ("q8_0", "f16", "q5_k_m", "q4_k_m", "bf16", "f32")
PLANNED_GGUF_TYPES = ("f16", "q8_0", "q5_k_m", "q4_k_m")  # `panda plan` without --gguf-type
RECOMMENDED_GGUF_TYPES = ("q8_0", "q5_k_m", "q4_k_m")  # the plan recommends the first that fits
BENCHMARKED_GGUF_TYPES = ("f16", "q8_0", "q4_k_m")  # `panda bench llm` against transformers
RUNTIME_GGUF_TYPE = GGUF_PREFERENCE[0]  # the demo's and the task level's decoder
SMALLER_GGUF_TYPE = "q4_k_m"  # what an out-of-memory error suggests
REFERENCE_GGUF_TYPE = "f32"  # exact: the e2e parity level and the tokenizer level read it
# Holds float16-stored weights exactly: parity judges it in place of a missing f32 GGUF.
STANDIN_GGUF_TYPE = "f16"


def check_gguf_type(name: str) -> GgufType:
    try:
        return GGUF_TYPES[name]
    except KeyError:
        raise PandaError(f"unknown GGUF type '{name}'; choose one of: {', '.join(GGUF_TYPES)}") from None


# --- KV cache types (`--kv-type`) ------------------------------------------------------------------


@dataclass(frozen=True)
class KvCacheType:
    """One element type of llama.cpp's KV cache (`--cache-type-k/-v`)."""

    name: str
    ggml_type: str  # for its size (plan/ggml.py BLOCKS)
    ggml_id: int  # enum ggml_type: llama.cpp's type_k / type_v

    @property
    def flash_attn(self) -> bool:
        """llama.cpp refuses a quantized V cache without flash attention."""
        return self.ggml_type not in ("F32", "F16")


KV_CACHE_TYPES: dict[str, KvCacheType] = {
    t.name: t
    for t in (
        KvCacheType("f32", "F32", 0),  # exact: the parity runs
        KvCacheType("f16", "F16", 1),  # llama.cpp's default
        KvCacheType("q8_0", "Q8_0", 8),
        KvCacheType("q4_0", "Q4_0", 2),
    )
}
DEFAULT_KV_CACHE = "f16"
SMALLER_KV_CACHE = "q8_0"  # what an out-of-memory error suggests
# The context llama.cpp is given when none is asked: the model's, at most this (a square video's
# prefix is 2,248 positions at full size; 4096 leaves room for turns and answers).
DEFAULT_N_CTX = 4096
# A live stream's window (panda watch, serve --stream, bench watch): the latest 8 s (the official
# sampler's 1 fps grid gives the model's 8 frames), refreshed at most once a second.
DEFAULT_WINDOW_S = 8.0
DEFAULT_EVERY_S = 1.0


def default_n_ctx(max_position_embeddings: int) -> int:
    """The context `panda run` allocates and `panda plan` sizes when --n-ctx is not given."""
    return min(DEFAULT_N_CTX, int(max_position_embeddings))


def check_kv_cache(name: str) -> KvCacheType:
    try:
        return KV_CACHE_TYPES[name]
    except KeyError:
        raise PandaError(
            f"unknown KV cache type '{name}'; choose one of: {', '.join(KV_CACHE_TYPES)}"
        ) from None


# --- Vision backends and precisions (`--vision`, `--precision`) -------------------------------------

ORT, TRT, TORCH = "ort", "trt", "torch"
FP32, FP16, BF16, INT8 = "fp32", "fp16", "bf16", "int8"
VISION_BACKENDS: dict[str, str] = {
    ORT: "ONNX Runtime",
    TRT: "TensorRT engine",
    TORCH: "the PyTorch reference",
}
# backend -> the precisions it runs, its default first. ONNX Runtime runs the fp32 graph or the
# calibrated INT8 graph; TensorRT an engine of the precision (fp16 exists only as an engine, and is
# what `panda build-engine` builds by default); the PyTorch reference runs the checkpoint's vision part
# at a compute dtype (fp16 and bf16 for a GPU: `--device cuda`).
PRECISIONS: dict[str, tuple[str, ...]] = {
    ORT: (FP32, INT8),
    TRT: (FP16, INT8, FP32),
    TORCH: (FP32, FP16, BF16),
}
# Where each backend runs: ONNX Runtime on the CPU, TensorRT on its engine's GPU, PyTorch on either
# (`--device`; the reference's devices, model/loading.py DEVICES).
CPU, CUDA = "cpu", "cuda"
DEVICES: dict[str, tuple[str, ...]] = {ORT: (CPU,), TRT: (CUDA,), TORCH: (CPU, CUDA)}
# A planning device without a GPU runs ONNX Runtime, as `panda run` does when no backend is asked.
CPU_BACKEND = ORT
DEFAULT_BACKEND = ORT


def default_precision(backend: str) -> str:
    """The precision `backend` runs when none is asked."""
    return precisions(backend)[0]


def check_backend(backend: str) -> str:
    if backend not in VISION_BACKENDS:
        raise PandaError(f"unknown vision backend '{backend}'; choose one of: {', '.join(VISION_BACKENDS)}")
    return backend


def precisions(backend: str) -> tuple[str, ...]:
    return PRECISIONS[check_backend(backend)]


def check_precision(backend: str, precision: str, asked_by: str | None = None) -> str:
    """`precision` if `backend` runs it, else an error naming the ones it does (`asked_by`: the
    option the error names, `--vision BACKEND` by default)."""
    if precision not in precisions(backend):
        raise PandaError(
            f"unknown vision precision '{precision}' for {asked_by or f'--vision {backend}'}; choose one of: "
            f"{', '.join(precisions(backend))}"
        )
    return precision


def precision_help(backend: str) -> str:
    """'fp16 (default), int8 or fp32' for help texts."""
    first, *rest = precisions(backend)
    return listed([f"{first} (default)", *rest])


# --- TensorRT targets (`--trt-profile`; engine builds) ----------------------------------------------

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
# Which manifest section holds the graph an engine of a precision is built from, per typing: a
# weakly typed build takes fp16 from a builder flag, a strongly typed one from the fp16 graph.
_WEAK_GRAPHS = {FP32: "vision", FP16: "vision", INT8: "vision_int8"}
_STRONG_GRAPHS = {FP32: "vision", FP16: "vision_fp16", INT8: "vision_int8"}


@dataclass(frozen=True)
class TrtTarget:
    """One TensorRT generation: the graph profile exported for it (what its ONNX parser reads) and
    how it builds engines of each precision.

    - 8.5 / 8.6 (JetPack 5.x ships 8.5, JetPack 6.0 ships 8.6): weakly typed; precision comes from
      builder flags (FP16; a Q/DQ graph needs INT8, with FP16 allowed for the float parts); the ONNX
      parser needs EXPLICIT_BATCH. No `LayerNormalization` (added in 8.6): LayerNorm is decomposed.
    - 10.x (JetPack 6.1 and 6.2 ship 10.3): built strongly typed, so every tensor keeps the graph's
      type: fp16 comes from the fp16 graph, INT8 from the Q/DQ graph; no precision flags.
    - 11.x: always strongly typed; the precision flags and `trtexec --fp16/--int8` are gone.
    """

    profile: str  # --trt-profile; the manifest's vision.profile
    major: str  # the TensorRT major version that builds it; engine records' tensorrt_family
    tensorrt: str  # the release the profile's operators were checked against
    platform: str
    opset: int  # the opset we export with
    max_opset: int  # the highest the parser reads
    layer_norm_op: bool  # False: LayerNorm is decomposed into ReduceMean/Sub/Mul/Sqrt/Div/Add
    allowed_ops: frozenset[str]
    strongly_typed: bool
    network_flags: tuple[str, ...]  # trt.NetworkDefinitionCreationFlag names
    builder_flags: dict[str, tuple[str, ...]]  # precision -> trt.BuilderFlag names
    trtexec_flags: dict[str, tuple[str, ...]]  # precision -> trtexec options
    graphs: dict[str, str]  # precision -> manifest section of the graph to build

    @property
    def label(self) -> str:
        return f"TensorRT {self.major}.x"


TRT_TARGETS: dict[str, TrtTarget] = {
    t.profile: t
    for t in (
        TrtTarget(
            profile="8.5",
            major="8",
            tensorrt="8.5",
            platform="JetPack 5.x and 6.0 (TensorRT 8.5 / 8.6)",
            opset=17,
            max_opset=17,
            layer_norm_op=False,
            allowed_ops=_COMMON_OPS,
            strongly_typed=False,
            network_flags=("EXPLICIT_BATCH",),
            builder_flags={FP32: (), FP16: ("FP16",), INT8: ("INT8", "FP16")},
            trtexec_flags={FP32: (), FP16: ("--fp16",), INT8: ("--int8", "--fp16")},
            graphs=_WEAK_GRAPHS,
        ),
        TrtTarget(
            profile="10",
            major="10",
            tensorrt="10.3",
            platform="JetPack 6.1 / 6.2 (TensorRT 10.3)",
            opset=17,
            max_opset=17,
            layer_norm_op=True,
            allowed_ops=_COMMON_OPS | {"LayerNormalization"},
            strongly_typed=True,
            network_flags=("STRONGLY_TYPED",),
            builder_flags={p: () for p in PRECISIONS[TRT]},
            trtexec_flags={p: ("--stronglyTyped",) for p in PRECISIONS[TRT]},
            graphs=_STRONG_GRAPHS,
        ),
        # 20 is the newest opset the TorchScript exporter writes; TensorRT 10.0+ already parses it.
        TrtTarget(
            profile="11",
            major="11",
            tensorrt="11",
            platform="desktop and server GPUs (TensorRT 11)",
            opset=20,
            max_opset=20,
            layer_norm_op=True,
            allowed_ops=_COMMON_OPS | {"LayerNormalization", "Gelu"},
            strongly_typed=True,
            network_flags=(),  # always strongly typed
            builder_flags={p: () for p in PRECISIONS[TRT]},
            trtexec_flags={p: () for p in PRECISIONS[TRT]},
            graphs=_STRONG_GRAPHS,
        ),
    )
}
DEFAULT_TRT_PROFILE = "11"


def trt_target(profile: str) -> TrtTarget:
    """The target of a `--trt-profile` (or a manifest's vision.profile)."""
    try:
        return TRT_TARGETS[str(profile)]
    except KeyError:
        raise PandaError(
            f"unknown TensorRT profile '{profile}'; choose one of: {', '.join(TRT_TARGETS)}"
        ) from None


def trt_profile_help() -> str:
    """'8.5 for JetPack 5.x and 6.0 (...); 10 for ...; 11 for ...' for help texts."""
    return "; ".join(f"{t.profile} for {t.platform}" for t in TRT_TARGETS.values())


def listed(names: Iterable[str]) -> str:
    """'a, b or c': a table's names in a help text."""
    *head, last = names
    return f"{', '.join(head)} or {last}" if head else last
