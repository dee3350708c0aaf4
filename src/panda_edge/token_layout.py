"""The exported vision graph's contract: its input and output names, and its token layout.

From the static graph's full-grid tokens to the reference's per-frame tokens (numpy, no torch).

The exported graph computes every frame on the full LSD grid (`g x g` windows) and writes
`[context, row_1 (g), split, ..., row_g (g), split]`. The reference crops each frame to its real
patches first, so here we find the same crop rectangle from the mask channel (first and last
non-zero patch, as `STAB.crop_rect`; an all-padding frame keeps its top-left `pad_frame_patches`
square) and keep the context token, the windows inside the rectangle and each kept row's split.

The graph is exact when the rectangle starts on an LSD window boundary, which every frame from
`panda_edge.video.load_video` does (its geometry is computed at half size and doubled); other
masks are refused with an error rather than answered approximately.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from panda_edge.errors import PandaError

METADATA_KEY = "panda_edge.layout"
# The graph's one input and one output, by name: the exporter writes them, every backend feeds and reads them.
FRAMES = "frames"
VISUAL_TOKENS = "visual_tokens"


@dataclass(frozen=True)
class WindowRect:
    """Kept LSD windows of one frame: rows [row0, row0 + rows), columns [col0, col0 + cols)."""

    row0: int
    col0: int
    rows: int
    cols: int

    @property
    def tokens(self) -> int:
        return 1 + self.rows * (self.cols + 1)


@dataclass(frozen=True)
class TokenLayout:
    """Geometry shared by the exported graph and the runtime (stored in the ONNX metadata)."""

    video_frames: int
    image_size: int
    patch: int
    conv_stride: int
    pad_frame_patches: int
    hidden: int

    @classmethod
    def from_config(cls, vision: Any, hidden: int) -> TokenLayout:
        """From a `VisionConfig` and the projector's output width."""
        return cls(
            video_frames=vision.video_frames,
            image_size=vision.image_size,
            patch=vision.patch,
            conv_stride=vision.conv_stride,
            pad_frame_patches=vision.pad_frame_patches,
            hidden=hidden,
        )

    @property
    def grid(self) -> int:
        """Patches per side."""
        return self.image_size // self.patch

    @property
    def windows(self) -> int:
        """LSD windows per side of the full grid (g)."""
        return self.grid // self.conv_stride

    @property
    def frames_shape(self) -> tuple[int, int, int, int]:
        return (self.video_frames, 4, self.image_size, self.image_size)

    @property
    def tokens_shape(self) -> tuple[int, int, int]:
        g = self.windows
        return (self.video_frames, 1 + g * (g + 1), self.hidden)

    def to_json(self) -> str:
        return json.dumps(asdict(self), sort_keys=True)

    @classmethod
    def from_json(cls, text: str) -> TokenLayout:
        return cls(**json.loads(text))

    # --- crop rectangles --------------------------------------------------------------------------

    def patch_masks(self, frames: np.ndarray) -> np.ndarray:
        """(N, 4, S, S) -> (N, grid, grid) bool: patches holding any real pixel."""
        n, p, grid = frames.shape[0], self.patch, self.grid
        mask = frames[:, 3, : grid * p, : grid * p].reshape(n, grid, p, grid, p)
        return mask.mean(axis=(2, 4), dtype=np.float32) != 0

    def frame_rect(self, patch_mask: np.ndarray, index: int = 0) -> WindowRect:
        """The reference's crop rectangle of one frame, in LSD windows of the full grid."""
        s = self.conv_stride
        if not patch_mask.any():
            side = min(self.pad_frame_patches, self.grid) // s
            return WindowRect(0, 0, side, side)
        rows, cols = np.nonzero(patch_mask)
        r1, c1, r2, c2 = int(rows[0]), int(cols[0]), int(rows[-1]), int(cols[-1])  # as STAB.crop_rect
        box = np.zeros_like(patch_mask)
        box[r1 : r2 + 1, c1 : c2 + 1] = True
        if not np.array_equal(box, patch_mask):
            raise PandaError(
                f"frame {index}: its real pixels do not form a rectangle of patches; "
                "pass frames made by panda_edge.video.load_video"
            )
        if r1 % s or c1 % s:
            raise PandaError(
                f"frame {index}: its real pixels start at patch ({r1}, {c1}), not on the {s}-patch "
                "LSD window grid the exported graph uses; pass frames made by panda_edge.video.load_video"
            )
        return WindowRect(r1 // s, c1 // s, (r2 - r1 + 1) // s, (c2 - c1 + 1) // s)

    def frame_rects(self, frames: np.ndarray) -> list[WindowRect]:
        return [self.frame_rect(m, i) for i, m in enumerate(self.patch_masks(frames))]

    # --- token selection --------------------------------------------------------------------------

    def token_index(self, rect: WindowRect) -> np.ndarray:
        """Positions in a full-grid frame's tokens that the reference keeps, in its order."""
        g = self.windows
        rows = np.arange(rect.row0, rect.row0 + rect.rows)[:, None]
        kept = np.concatenate(
            [rect.col0 + np.arange(rect.cols), [g]]  # the row's windows, then its split token
        )[None, :]
        return np.concatenate([[0], (1 + rows * (g + 1) + kept).ravel()])

    def select(self, visual_tokens: np.ndarray, rects: list[WindowRect]) -> list[np.ndarray]:
        """(N, 1 + g(g+1), hidden) full-grid tokens -> one (1 + h(w+1), hidden) array per frame."""
        return [visual_tokens[i][self.token_index(r)] for i, r in enumerate(rects)]
