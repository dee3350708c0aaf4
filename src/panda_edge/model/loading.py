"""Loading released checkpoints within memory: modules built on the meta device, weights assigned
tensor by tensor as each shard is read, in the dtype they are kept in.

At 7B the released float16 weights are 13.5 GB; building the model in float32 and then reading all
weights needed about 40 GB. Here nothing is allocated before a weight is read, a safetensors shard
is read tensor by tensor, and the peak is about one copy of the weights as kept.

The reference computes in `--dtype` (fp32 by default). With fp32 compute over weights stored in 16
bits, the Llama's Linear and Embedding weights stay in their stored dtype and are widened to float32
as each layer runs: float16 and bfloat16 widen to float32 exactly, so the numbers are those of a
float32 copy, without the 27 GB copy. Everything else (norms, biases, STAB + projector, 46.5M
parameters) is converted to the compute dtype once.
"""

from __future__ import annotations

import json
import logging
import math
import struct
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from panda_edge.backends import BF16, CPU, CUDA, FP16, FP32, TORCH
from panda_edge.backends import DEVICES as BACKEND_DEVICES
from panda_edge.config import ModelConfig
from panda_edge.errors import CheckpointError, PandaError
from panda_edge.memory import GB, NotEnoughMemory, check_memory
from panda_edge.model.checkpoint import (
    ALIASES,
    VIDEO_PROJECTOR,
    VIDEO_TOWER,
    canonical_name,
    describe_mismatch,
    read_weight_file,
    weight_files,
)

log = logging.getLogger(__name__)

DTYPES: dict[str, torch.dtype] = {FP32: torch.float32, BF16: torch.bfloat16, FP16: torch.float16}
DEVICES = BACKEND_DEVICES[TORCH]
SIXTEEN_BIT = (torch.float16, torch.bfloat16)
_VISION_PREFIXES = (VIDEO_TOWER, VIDEO_PROJECTOR)
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class ReferencePrecision:
    """How the reference runs: the compute dtype and the device (docs/design.md §7)."""

    dtype: str = FP32
    device: str = CPU

    def __post_init__(self) -> None:
        if self.dtype not in DTYPES:
            raise PandaError(f"unknown --dtype '{self.dtype}'; choose one of: {', '.join(DTYPES)}")
        if self.device not in DEVICES:
            raise PandaError(f"unknown --device '{self.device}'; choose one of: {', '.join(DEVICES)}")
        if self.device == CUDA and not torch.cuda.is_available():
            raise PandaError("--device cuda: this PyTorch sees no CUDA GPU; use --device cpu")

    @property
    def compute(self) -> torch.dtype:
        return DTYPES[self.dtype]

    def kept(self, stored: torch.dtype, widenable: bool) -> torch.dtype:
        """The dtype a weight is kept in: its stored 16 bits when fp32 compute can widen it per layer."""
        if not stored.is_floating_point:
            return stored
        if widenable and self.compute == torch.float32 and stored in SIXTEEN_BIT:
            return stored
        return self.compute


def exact_fp32_on_gpu() -> None:
    """fp32 on a GPU means fp32: PyTorch lets cuDNN run float32 convolutions in TF32 by default (about
    1e-3 relative), which STAB's patch embedding and 3-D convolutions would then differ by from the CPU
    reference. Process-wide, as PyTorch's switches are."""
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


# --- reading ------------------------------------------------------------------------------------


def tensor_specs(directory: Path) -> dict[str, tuple[torch.dtype, tuple[int, ...]]]:
    """Every tensor's stored dtype and shape, without reading the weights (safetensors headers)."""
    specs: dict[str, tuple[torch.dtype, tuple[int, ...]]] = {}
    for path in weight_files(directory):
        if path.suffix == ".safetensors":
            entries, _ = _safetensors_header(path)
            specs.update({name: (dtype, shape) for name, (dtype, shape, _) in entries.items()})
        else:
            specs.update({k: (v.dtype, tuple(v.shape)) for k, v in read_weight_file(path, mmap=True).items()})
    return specs


_Entry = tuple[torch.dtype, tuple[int, ...], tuple[int, int]]


def stored_llm_dtype(directory: Path) -> str:
    """The dtype most of the Llama's weights are stored in ('float16' for the released 7B)."""
    counts: dict[torch.dtype, int] = {}
    for name, (dtype, shape) in tensor_specs(directory).items():
        if dtype.is_floating_point and not name.startswith((*_VISION_PREFIXES, *ALIASES)):
            counts[dtype] = counts.get(dtype, 0) + math.prod(shape)
    return str(max(counts, key=counts.get)).removeprefix("torch.") if counts else "unknown"


def _safetensors_header(path: Path) -> tuple[dict[str, _Entry], int]:
    """name -> (dtype, shape, (begin, end)) and where the data starts, checked against the file size."""
    try:
        size = path.stat().st_size
        with path.open("rb") as f:
            (length,) = struct.unpack("<Q", f.read(8))
            if length > size - 8:
                raise ValueError("header longer than the file")
            header = json.loads(f.read(length))
        entries = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            dtype = _SAFETENSORS_DTYPES[entry["dtype"]]
            shape = tuple(int(d) for d in entry["shape"])
            begin, end = (int(o) for o in entry["data_offsets"])
            if end - begin != math.prod(shape) * dtype.itemsize or 8 + length + end > size:
                raise ValueError(f"'{name}' does not fit its shape or the file")
            entries[name] = (dtype, shape, (begin, end))
    except (OSError, struct.error, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise CheckpointError(f"{path}: cannot read weights ({exc})") from None
    return entries, 8 + length


def iter_tensors(directory: Path, wanted: Callable[[str], bool]) -> Iterator[tuple[str, Tensor]]:
    """(name, tensor) for each wanted tensor, shard by shard.

    Safetensors are read one tensor at a time into memory of its own (no memory map, whose touched
    pages would count as a second copy of the shard); `.bin` shards are memory-mapped by
    `torch.load(weights_only=True, mmap=True)`.
    """
    for path in weight_files(directory):
        if path.suffix != ".safetensors":
            state = read_weight_file(path, mmap=True)
            yield from ((k, v) for k, v in state.items() if wanted(k))
            continue
        entries, data_start = _safetensors_header(path)
        with path.open("rb") as f:
            for name, (dtype, shape, (begin, end)) in sorted(entries.items(), key=lambda e: e[1][2]):
                if not wanted(name):
                    continue
                data = torch.empty(end - begin, dtype=torch.uint8)
                f.seek(data_start + begin)
                if f.readinto(data.numpy()) != end - begin:
                    raise CheckpointError(f"{path}: cannot read weights ('{name}' is cut short)")
                yield name, data.view(dtype).reshape(shape)


# --- assigning ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Slot:
    """Where a checkpoint tensor goes: its part's prefix, the module owning it, its attribute name."""

    prefix: str
    owner: nn.Module
    leaf: str
    shape: torch.Size


def _slots(parts: Mapping[str, nn.Module]) -> dict[str, _Slot]:
    """Every weight and buffer of `parts` (prefix -> module) by its checkpoint name."""
    slots = {}
    for prefix, module in parts.items():
        for local, tensor in module.state_dict(keep_vars=True).items():
            owner_path, _, leaf = local.rpartition(".")
            slots[prefix + local] = _Slot(prefix, module.get_submodule(owner_path), leaf, tensor.shape)
    return slots


def load_weights(
    parts: Mapping[str, nn.Module],
    directory: Path,
    precision: ReferencePrecision,
    keeps_16bit: Callable[[str, nn.Module], bool] = lambda prefix, module: False,
) -> list[str]:
    """Fill `parts` (prefix -> module built on the meta device) from the checkpoint, tensor by tensor.

    A weight whose (part prefix, owning module) passes `keeps_16bit` keeps its stored 16 bits under
    fp32 compute.
    Every expected weight must come with its shape and nothing unexpected may; else one error names
    them. Returns the names skipped as training-only or derived.
    """
    expected = _slots(parts)
    assigned: dict[str, Tensor] = {}
    skipped: list[str] = []
    unexpected: list[str] = []
    wrong: list[str] = []

    def wanted(raw_name: str) -> bool:
        name = canonical_name(raw_name)
        if name is None:
            skipped.append(raw_name)
            return False
        return _part_of(name, parts) is not None  # other parts' weights are not read

    for raw_name, tensor in iter_tensors(directory, wanted):
        name = canonical_name(raw_name) or raw_name
        if name not in expected:
            unexpected.append(name)
            continue
        slot = expected[name]
        if tuple(tensor.shape) != tuple(slot.shape):
            wrong.append(f"{name} {tuple(tensor.shape)} (expected {tuple(slot.shape)})")
            continue
        if name in assigned:
            if not torch.equal(assigned[name].to(tensor.dtype).cpu(), tensor):
                raise CheckpointError(f"'{name}' appears under both of its aliases with different values")
            continue
        kept = precision.kept(tensor.dtype, keeps_16bit(slot.prefix, slot.owner))
        value = tensor.to(device=precision.device, dtype=kept)
        if slot.leaf in slot.owner._parameters:
            slot.owner._parameters[slot.leaf] = nn.Parameter(value, requires_grad=False)
        else:
            slot.owner._buffers[slot.leaf] = value
        assigned[name] = value
    missing = sorted(set(expected) - set(assigned))
    if missing or unexpected or wrong:
        raise CheckpointError(describe_mismatch(missing, sorted(unexpected), sorted(wrong)))
    return skipped


# --- fp32 compute over 16-bit weights -------------------------------------------------------------


class WidenedLinear(nn.Linear):
    """A Linear whose weight is kept in 16 bits and widened to the input's dtype as it runs."""

    def forward(self, x: Tensor) -> Tensor:
        bias = None if self.bias is None else self.bias.to(x.dtype)
        return F.linear(x, self.weight.to(x.dtype), bias)


class WidenedEmbedding(nn.Embedding):
    """An Embedding kept in 16 bits whose looked-up rows are widened to `compute_dtype`."""

    compute_dtype: torch.dtype = torch.float32

    def forward(self, ids: Tensor) -> Tensor:
        return super().forward(ids).to(self.compute_dtype)


def widenable(module: nn.Module) -> bool:
    """The Llama's bulk: Linear and Embedding weights (all but a few MB of its parameters)."""
    return isinstance(module, (nn.Linear, nn.Embedding))


def widen_compute(root: nn.Module, precision: ReferencePrecision) -> None:
    """Make modules whose weights were kept in 16 bits compute in `precision.compute`.

    The class is swapped in place, so the module tree and state-dict names stay transformers'.
    """
    for module in root.modules():
        if not widenable(module) or module.weight.dtype == precision.compute:
            continue
        if isinstance(module, nn.Linear):
            module.__class__ = WidenedLinear
        else:
            module.__class__ = WidenedEmbedding
            module.compute_dtype = precision.compute


def materialize_buffers(root: nn.Module, device: str) -> None:
    """Buffers the checkpoint does not hold (RoPE's inverse frequencies) are still on the meta device:
    build them again where the weights are."""
    for name, module in root.named_modules():
        if any(b is not None and b.is_meta for b in module.buffers(recurse=False)):
            if not type(module).__name__.endswith("RotaryEmbedding"):
                raise CheckpointError(f"{name}: a buffer the checkpoint does not hold cannot be rebuilt")
            with torch.device("cpu"):
                rebuilt = type(module)(config=module.config).to(device)
            parent_path, _, leaf = name.rpartition(".")
            setattr(root.get_submodule(parent_path), leaf, rebuilt)


def weight_bytes(
    parts: Mapping[str, nn.Module],
    stored: Mapping[str, torch.dtype],
    precision: ReferencePrecision,
    keeps_16bit: Callable[[str, nn.Module], bool],
) -> int:
    """Bytes `parts` take once filled: each slot in the dtype its stored tensor (by canonical name) is
    kept in, by the rule `load_weights` applies."""
    total = 0
    for name, slot in _slots(parts).items():
        dtype = stored.get(name, precision.compute)
        total += math.prod(slot.shape) * precision.kept(dtype, keeps_16bit(slot.prefix, slot.owner)).itemsize
    return total


# --- the whole path: check memory, build, fill ----------------------------------------------------

PROCESS_BYTES = int(0.5e9)  # Python, torch, transformers and the decoded video, measured ~0.45 GB


def build_on_meta(factory: Callable[[], nn.Module]) -> Any:
    """Modules built without allocating their weights; `load_weights` fills them."""
    with torch.device("meta"):
        return factory()


def working_bytes(
    config: ModelConfig, precision: ReferencePrecision, tokens: int, vision: bool, llm: bool
) -> int:
    """Memory besides the weights while the reference runs `tokens` positions: the KV cache, the
    largest activations, all-position logits, a widened layer, and STAB's activations for one video."""
    size = precision.compute.itemsize
    need = PROCESS_BYTES
    if llm:
        c = config.llm
        need += 2 * c.num_hidden_layers * tokens * c.hidden_size * size  # KV cache
        need += 3 * tokens * c.intermediate_size * size  # gate, up, their product
        need += tokens * c.vocab_size * 4  # float32 logits at every position (the llm level)
        if precision.compute == torch.float32:
            need += c.vocab_size * c.hidden_size * 4  # the widest layer widened (lm_head)
    if vision:
        v = config.vision
        patches = (v.image_size // v.patch) ** 2
        need += 32 * v.video_frames * patches * v.width * size
    return need


def load_reference(
    parts: Mapping[str, nn.Module],
    directory: Path,
    precision: ReferencePrecision,
    what: str,
    working: int,
    widen: str | None = None,
) -> list[str]:
    """Check memory, then fill `parts` (built on meta) from `directory`; the modules under the prefix
    `widen` keep 16-bit Linear and Embedding weights under fp32 compute. Returns the skipped names."""

    def keeps_16bit(prefix: str, module: nn.Module) -> bool:
        return prefix == widen and widenable(module)

    specs = tensor_specs(directory)
    stored = {name: specs[n][0] for n in specs if (name := canonical_name(n)) is not None}
    need = weight_bytes(parts, stored, precision, keeps_16bit) + working
    if precision.device == CUDA:
        free, _ = torch.cuda.mem_get_info()
        if need > free:
            raise NotEnoughMemory(
                f"{what} in {precision.dtype} needs about {need / GB:.1f} GB of GPU memory and "
                f"{free / GB:.1f} GB is free; use --dtype fp16 or bf16, or --device cpu"
            )
    else:
        check_memory(need, f"{what} in {precision.dtype}", _hint(precision))
    log.info("loading %s from %s (%s on %s)", what, directory, precision.dtype, precision.device)
    if precision.device == CUDA and precision.compute == torch.float32:
        exact_fp32_on_gpu()
    skipped = load_weights(parts, directory, precision, keeps_16bit)
    for module in parts.values():
        materialize_buffers(module, precision.device)
        widen_compute(module, precision)
    return skipped


def _part_of(name: str, parts: Mapping[str, nn.Module]) -> str | None:
    """The prefix of `parts` a canonical name belongs to (the longest that matches; '' matches the
    rest only when no other part claims the name's own prefix)."""
    matches = [p for p in parts if p and name.startswith(p)]
    if matches:
        return max(matches, key=len)
    if "" in parts and not name.startswith(_VISION_PREFIXES):
        return ""
    return None


def _hint(precision: ReferencePrecision) -> str:
    if precision.dtype == "fp32":
        return "--dtype bf16 or fp16 halves what float32 weights take, --device cuda moves them to a GPU"
    return "--device cuda moves the weights to a GPU; or free memory on this machine"
