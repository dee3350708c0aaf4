"""The one contract every vision backend keeps (ONNX Runtime, TensorRT, the PyTorch reference).

A backend is a context manager (`with engine:` loads it, leaving frees it) with
`input_metadata()`, `infer(feed) -> {name: array}` on the static graph's inputs and outputs, and
`encode(frames)` -> the reference's per-frame tokens. The checks live here, so backends only
implement loading and running.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Mapping
from dataclasses import dataclass
from types import TracebackType

import numpy as np

from panda_edge.errors import PandaError
from panda_edge.token_layout import FRAMES, VISUAL_TOKENS, TokenLayout


@dataclass(frozen=True)
class TensorSpec:
    shape: tuple[int, ...]
    dtype: np.dtype


class VisionBackend(ABC):
    """Subclasses implement `_activate` (which sets `_layout`), `_deactivate` and `_infer`."""

    name = "base"

    def __init__(self) -> None:
        self._active = False
        self._layout: TokenLayout | None = None

    # --- lifetime ---------------------------------------------------------------------------------

    def __enter__(self) -> VisionBackend:
        if not self._active:
            self._activate()
            self._active = True
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._active:
            self._deactivate()
            self._active = False

    @property
    def active(self) -> bool:
        return self._active

    @abstractmethod
    def _activate(self) -> None: ...

    def _deactivate(self) -> None:
        return None

    # --- contract ---------------------------------------------------------------------------------

    @property
    def layout(self) -> TokenLayout:
        """The geometry of the static graph (available once active)."""
        self._require_active()
        return self._layout

    def input_metadata(self) -> dict[str, TensorSpec]:
        return {FRAMES: TensorSpec(self.layout.frames_shape, np.dtype(np.float32))}

    def infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the static graph: {'frames': (F, 4, S, S)} -> {'visual_tokens': (F, 1 + g(g+1), hidden)}."""
        self._require_active()
        expected = self.input_metadata()
        if set(feed) != set(expected):
            raise PandaError(f"{self.name}: expected inputs {sorted(expected)}, got {sorted(feed)}")
        for name, spec in expected.items():
            value = feed[name]
            if not isinstance(value, np.ndarray) or value.dtype != spec.dtype:
                got = value.dtype if isinstance(value, np.ndarray) else type(value).__name__
                raise PandaError(f"{self.name}: input '{name}' must be a {spec.dtype} array, got {got}")
            if tuple(value.shape) != spec.shape:
                raise PandaError(
                    f"{self.name}: input '{name}' has shape {tuple(value.shape)}, the graph takes "
                    f"{spec.shape} (one video of {spec.shape[0]} frames at {spec.shape[-1]} px)"
                )
        return self._infer(feed)

    @abstractmethod
    def _infer(self, feed: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]: ...

    def encode(self, frames: np.ndarray) -> list[np.ndarray]:
        """(F, 4, S, S) frames from `load_video` -> one (tokens, hidden) array per frame, as
        `VideoPanda.encode_frames` gives them (the static graph's tokens outside each crop dropped)."""
        self._require_active()
        frames = np.ascontiguousarray(frames, dtype=np.float32)
        rects = self.layout.frame_rects(self._check_frames(frames))
        return self.layout.select(self.infer({FRAMES: frames})[VISUAL_TOKENS], rects)

    # --- helpers ----------------------------------------------------------------------------------

    def _require_active(self) -> None:
        if not self._active:
            raise RuntimeError(f"{self.name}: use the backend inside a `with` block")

    def _check_frames(self, frames: np.ndarray) -> np.ndarray:
        shape = self.layout.frames_shape
        if frames.shape != shape:
            raise PandaError(
                f"{self.name}: frames have shape {frames.shape}, expected {shape}; "
                "make them with panda_edge.video.load_video for this model"
            )
        return frames
