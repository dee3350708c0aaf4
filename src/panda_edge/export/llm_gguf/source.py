"""Lazy access to checkpoint tensors: names and shapes without data, then rows on demand.

Safetensors are read through `safe_open` slices, so only the requested rows are copied; the file is
opened per read, so its memory map never accumulates the whole shard in the process's memory.
`.bin` shards are opened with `torch.load(mmap=True, weights_only=True)`, one shard at a time.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from panda_edge.errors import CheckpointError

# safetensors dtypes numpy cannot hold; read through torch and widened to float32.
_TORCH_ONLY = {"BF16", "F8_E4M3", "F8_E5M2"}


@dataclass(frozen=True)
class SourceTensor:
    """One checkpoint tensor, described without reading its data."""

    name: str
    file: Path
    shape: tuple[int, ...]
    dtype: str  # safetensors spelling (F32, F16, BF16) or the torch dtype for .bin

    @property
    def nbytes_f32(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * 4


def list_tensors(files: list[Path]) -> Iterator[SourceTensor]:
    """Names, shapes and dtypes of every tensor in `files`, reading headers only."""
    for path in files:
        if path.suffix == ".safetensors":
            from safetensors import SafetensorError, safe_open

            try:
                with safe_open(str(path), framework="numpy") as f:
                    for name in f.keys():  # noqa: SIM118 (safe_open has no __iter__)
                        piece = f.get_slice(name)
                        yield SourceTensor(name, path, tuple(piece.get_shape()), piece.get_dtype())
            except (SafetensorError, OSError) as exc:
                raise CheckpointError(f"{path}: cannot read weights ({exc})") from None
        else:
            for name, tensor in _load_bin(path).items():
                yield SourceTensor(name, path, tuple(tensor.shape), str(tensor.dtype))


def read_rows(src: SourceTensor, start: int, stop: int) -> np.ndarray:
    """Rows `start:stop` of `src` (all of a 1-D tensor's elements) as float32."""
    if src.file.suffix == ".safetensors":
        from safetensors import safe_open

        framework = "pt" if src.dtype in _TORCH_ONLY else "numpy"
        with safe_open(str(src.file), framework=framework) as f:
            block = f.get_slice(src.name)[start:stop]
        if framework == "pt":
            return block.float().numpy()
        return np.asarray(block, dtype=np.float32)
    tensor = _load_bin(src.file)[src.name]
    return tensor[start:stop].float().numpy()


@functools.lru_cache(maxsize=1)  # one shard at a time, memory-mapped
def _load_bin(path: Path) -> dict:
    import pickle

    import torch

    try:
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError:
        raise CheckpointError(
            f"{path}: cannot read weights (it holds Python objects besides tensors; refused for safety)"
        ) from None
    except (OSError, RuntimeError, ValueError, EOFError) as exc:
        raise CheckpointError(f"{path}: cannot read weights ({str(exc).splitlines()[0]})") from None
    if not isinstance(state, dict):
        raise CheckpointError(f"{path}: cannot read weights (not a mapping of names to tensors)")
    return state
