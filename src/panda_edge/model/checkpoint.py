"""Reading and writing checkpoints in the released Video-Panda layout.

A checkpoint directory holds `config.json`, weights as `model.safetensors` (or shards named by
`model.safetensors.index.json`) or `pytorch_model.bin` (or shards named by
`pytorch_model.bin.index.json`), and `tokenizer.model`. Weight names are the official ones:
`model.video_tower.*` (alias `model.vision_tower.*`), `model.video_projector.*` (alias
`model.mm_projector.*`), and the Llama names `model.*` / `lm_head.weight`.
"""

from __future__ import annotations

import json
import pickle
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from panda_edge.errors import CheckpointError
from panda_edge.fileio import atomic_path, write_json

SAFE_INDEX = "model.safetensors.index.json"
SAFE_SINGLE = "model.safetensors"
BIN_INDEX = "pytorch_model.bin.index.json"
BIN_SINGLE = "pytorch_model.bin"
TOKENIZER_FILE = "tokenizer.model"

VIDEO_TOWER = "model.video_tower."
VIDEO_PROJECTOR = "model.video_projector."
ALIASES = {"model.vision_tower.": VIDEO_TOWER, "model.mm_projector.": VIDEO_PROJECTOR}
# Present in training checkpoints, not needed for inference.
TRAINING_ONLY = (
    "model.video_tower_compressor.",
    "model.video_teacher.",
    "model.vision_tower_compressor.",
    "model.image_teacher.",
)
# Buffers older transformers versions saved and newer ones recompute.
DERIVED_SUFFIXES = (".rotary_emb.inv_freq",)


def weight_files(directory: Path) -> list[Path]:
    """The weight files of a checkpoint, in the order the index names them."""
    for index_name, single in ((SAFE_INDEX, SAFE_SINGLE), (BIN_INDEX, BIN_SINGLE)):
        index = directory / index_name
        if index.is_file():
            try:
                weight_map = json.loads(index.read_text())["weight_map"]
            except (OSError, ValueError, KeyError, TypeError) as exc:
                raise CheckpointError(f"{index}: not a valid weight index ({exc})") from None
            files = [directory / name for name in dict.fromkeys(weight_map.values())]
            missing = [f.name for f in files if not f.is_file()]
            if missing:
                raise CheckpointError(f"{index} names shards that are missing: {', '.join(missing)}")
            return files
        if (directory / single).is_file():
            return [directory / single]
    raise CheckpointError(
        f"{directory}: no weights found (expected {SAFE_SINGLE}, {SAFE_INDEX}, {BIN_SINGLE} or {BIN_INDEX})"
    )


def read_weight_file(path: Path, mmap: bool = False) -> dict[str, torch.Tensor]:
    """One weight file; pickles only through `torch.load(weights_only=True)`.

    `mmap`: a `.bin` in the zip format is memory-mapped instead of read (the legacy format is read).
    """
    try:
        if path.suffix == ".safetensors":
            state = load_file(str(path))
        elif mmap and _is_zip(path):
            state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: cannot read weights (it holds Python objects besides tensors; refused for safety)"
        ) from None
    except (SafetensorError, OSError, RuntimeError, ValueError, EOFError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(f"{path}: cannot read weights ({first})") from None
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path}: cannot read weights (not a mapping of names to tensors)")
    return state


def _is_zip(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            return f.read(4) == b"PK\x03\x04"
    except OSError:
        return False


@dataclass
class NormalizedWeights:
    state: dict[str, torch.Tensor]
    skipped: list[str] = field(default_factory=list)  # training-only or derived names, reported


def canonical_name(name: str) -> str | None:
    """The model's name for a checkpoint tensor; None for training-only or derived tensors."""
    if name.startswith(TRAINING_ONLY) or name.endswith(DERIVED_SUFFIXES):
        return None
    for alias, canonical in ALIASES.items():
        if name.startswith(alias):
            return canonical + name[len(alias) :]
    return name


def normalize_names(state: Mapping[str, torch.Tensor]) -> NormalizedWeights:
    """Map aliases to the canonical names and set aside training-only modules."""
    out: dict[str, torch.Tensor] = {}
    skipped: list[str] = []
    for raw_name, tensor in state.items():
        name = canonical_name(raw_name)
        if name is None:
            skipped.append(raw_name)
            continue
        if name in out and not torch.equal(out[name], tensor):
            raise CheckpointError(f"'{name}' appears under both of its aliases with different values")
        out[name] = tensor
    return NormalizedWeights(out, skipped)


def check_names(expected: Mapping[str, torch.Size], found: Mapping[str, torch.Tensor]) -> None:
    """Every expected weight present with its shape, nothing unexpected; else one error naming them."""
    wrong = sorted(
        f"{n} {tuple(found[n].shape)} (expected {tuple(expected[n])})"
        for n in set(expected) & set(found)
        if tuple(found[n].shape) != tuple(expected[n])
    )
    missing, unexpected = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    if missing or unexpected or wrong:
        raise CheckpointError(describe_mismatch(missing, unexpected, wrong))


def describe_mismatch(missing: list[str], unexpected: list[str], wrong: list[str]) -> str:
    """One line naming the weights that are missing, unexpected or of the wrong shape."""
    problems = []
    for label, names in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if names:
            shown = ", ".join(names[:8]) + (f" and {len(names) - 8} more" if len(names) > 8 else "")
            problems.append(f"{label}: {shown}")
    return "checkpoint does not match the model; " + "; ".join(problems)


# --- writing ------------------------------------------------------------------------------------------


def write_weights(
    directory: Path, state: Mapping[str, torch.Tensor], max_shard_bytes: int | None = None
) -> None:
    """Safetensors, sharded with an index when the weights exceed `max_shard_bytes`."""
    state = {k: v.detach().contiguous() for k, v in state.items()}
    total = sum(t.numel() * t.element_size() for t in state.values())
    shards: list[dict[str, torch.Tensor]] = [{}]
    size = 0
    for name, tensor in state.items():
        nbytes = tensor.numel() * tensor.element_size()
        if max_shard_bytes and shards[-1] and size + nbytes > max_shard_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = tensor
        size += nbytes
    stale = [*directory.glob("model-*-of-*.safetensors"), *directory.glob("pytorch_model-*-of-*.bin")]
    for path in [*stale, *(directory / n for n in (SAFE_INDEX, SAFE_SINGLE, BIN_INDEX, BIN_SINGLE))]:
        path.unlink(missing_ok=True)
    if len(shards) == 1:
        with atomic_path(directory / SAFE_SINGLE) as tmp:
            save_file(shards[0], str(tmp), metadata={"format": "pt"})
        return
    weight_map = {}
    for i, shard in enumerate(shards, start=1):
        name = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        with atomic_path(directory / name) as tmp:
            save_file(shard, str(tmp), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, name))
    write_json(directory / SAFE_INDEX, {"metadata": {"total_size": total}, "weight_map": weight_map})
