"""How a runtime is opened: one type for `panda run`, `chat`, `serve` (and its Ray replicas) and
`eval --bundle`, so a choice means the same in each and travels to another process as plain values.

Imports neither llama.cpp nor torch: the CLI builds and checks options before anything loads.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from panda_edge.backends import (
    CPU,
    DEFAULT_BACKEND,
    DEFAULT_KV_CACHE,
    DEVICES,
    TORCH,
    check_gguf_type,
    check_kv_cache,
    check_precision,
    default_precision,
)
from panda_edge.errors import PandaError
from panda_edge.runtime.bundle_parts import BundleParts, open_bundle
from panda_edge.runtime.lora_file import check_lora

if TYPE_CHECKING:
    from panda_edge.model.loading import ReferencePrecision
    from panda_edge.runtime.video_runtime import VideoRuntime


NEEDS_CHECKPOINT = "--vision torch runs the PyTorch reference: give --checkpoint (or 'tiny')"


@dataclass(frozen=True)
class RuntimeOptions:
    """The vision backend and its precision, the decoder's GGUF, threads, GPU layers, context, batch
    and KV cache type, the disk prefix cache and its bound, and (`--vision torch`) the checkpoint and
    the device PyTorch runs it on (its precision is the compute dtype: fp32, fp16 or bf16)."""

    vision: str = DEFAULT_BACKEND
    precision: str | None = None  # None: the backend's default (default_precision)
    gguf_type: str | None = None  # None: the bundle's preferred GGUF
    threads: int | None = None  # None: host.default_threads
    n_gpu_layers: int = 0
    n_ctx: int | None = None  # None: backends.default_n_ctx
    n_batch: int = 512
    kv_type: str = DEFAULT_KV_CACHE
    prefix_cache: str | Path | None = None  # a directory; None: no disk cache
    cache_max_bytes: int | None = None
    checkpoint: str | None = None  # --vision torch only: a checkpoint directory or 'tiny'
    lora: str | None = None  # a llama.cpp LoRA GGUF applied to the decoder at load (absolute path)
    device: str = CPU  # --vision torch only: cpu or cuda

    def __post_init__(self) -> None:
        """Every choice checked against the tables before anything loads (or Ray replicas start)."""
        check_precision(self.vision, self.vision_precision)
        check_kv_cache(self.kv_type)
        if self.gguf_type is not None:
            check_gguf_type(self.gguf_type)
        if self.vision == TORCH and self.checkpoint is None:
            raise PandaError(NEEDS_CHECKPOINT)
        if self.lora is not None and not Path(self.lora).is_file():
            raise PandaError(
                f"--lora {self.lora}: no such file (panda export --target gguf --lora writes one)"
            )
        if self.vision != TORCH and self.checkpoint is not None:
            raise PandaError(f"--checkpoint is for --vision torch; --vision {self.vision} runs the bundle")
        if self.device not in DEVICES[TORCH]:
            raise PandaError(f"unknown --device '{self.device}'; choose one of: {', '.join(DEVICES[TORCH])}")
        if self.device != CPU and self.vision != TORCH:
            raise PandaError(
                f"--device is where --vision torch runs; --vision {self.vision} runs on "
                f"{' or '.join(DEVICES[self.vision])} (a GPU without TensorRT: --vision torch --device cuda)"
            )

    @property
    def vision_precision(self) -> str:
        """The precision the vision backend runs at: the asked one, else the backend's default."""
        return self.precision or default_precision(self.vision)

    @property
    def vision_label(self) -> str:
        """'ort fp32', 'torch fp16 on cuda': the vision backend as reports name it."""
        where = "" if self.device == CPU else f" on {self.device}"
        return f"{self.vision} {self.vision_precision}{where}"

    def check(self, bundle: str | Path) -> BundleParts:
        """The bundle's parts for these options, its hashes checked: a bad bundle or a missing GGUF,
        graph or engine is an error here, before a model loads (or Ray replicas start); so is a `--lora`
        that is not a LoRA GGUF or was trained on other weights than the bundle's (`check_lora`), and
        `--device cuda` where PyTorch sees no GPU."""
        if self.vision == TORCH:
            self.torch_precision()
        parts = open_bundle(bundle, self.gguf_type, self.vision_precision, self.vision)
        if self.lora is not None:
            check_lora(self.lora, parts.manifest)
        return parts

    def torch_precision(self) -> ReferencePrecision:
        """`--vision torch`: its dtype and device as the reference takes them (imports torch; exit-2
        error for `--device cuda` without a CUDA GPU)."""
        from panda_edge.model.loading import ReferencePrecision

        return ReferencePrecision(self.vision_precision, self.device)

    def open(self, bundle: str | Path) -> VideoRuntime:
        """The runtime on `bundle` with these options."""
        from panda_edge.runtime.video_runtime import VideoRuntime

        return VideoRuntime(bundle, self)
