"""Frame pre-processing as the official `process_video_images` does it, in numpy + Pillow (no torch).

Aspect-preserving resize so the long side is `image_size` and the short side a multiple of
`2 * patch` (computed at the teacher size, then scaled), centred padding with the CLIP mean colour,
CLIP normalization, and a fourth channel that is 1 on real pixels and 0 on padding. Videos with fewer
than `video_frames` frames are completed with all-zero frames (mask 0 too). The official path also
flips frames at random (a training augmentation left in); this one is deterministic.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from PIL import Image

from panda_edge.config import CLIP_MEAN, CLIP_STD, VisionConfig

# The official code pastes onto a canvas of int(mean * 255) per channel.
PAD_COLOR = tuple(int(m * 255) for m in CLIP_MEAN)
_MEAN = np.asarray(CLIP_MEAN, dtype=np.float32).reshape(3, 1, 1)
_STD = np.asarray(CLIP_STD, dtype=np.float32).reshape(3, 1, 1)


@dataclass(frozen=True)
class FrameGeometry:
    """Where a `width x height` video lands on the square `image_size` canvas (pixels)."""

    resized_width: int
    resized_height: int
    pad_before: int  # rows above (landscape) or columns left (portrait)
    content: int  # rows (landscape) or columns (portrait) of real pixels
    pad_after: int
    landscape: bool  # padding goes above and below

    @property
    def square(self) -> bool:
        return self.resized_width == self.resized_height

    def patch_rect(self, vision: VisionConfig) -> tuple[int, int, int, int]:
        """(row0, col0, rows, cols) of the patches that hold real pixels."""
        grid, p = vision.grid, vision.patch
        if self.square:
            return 0, 0, grid, grid
        start, count = self.pad_before // p, math.ceil(self.content / p)
        return (start, 0, count, grid) if self.landscape else (0, start, grid, count)

    def tokens_per_frame(self, vision: VisionConfig) -> int:
        """Visual tokens for one real frame: context token + rows x (columns + split)."""
        _, _, rows, cols = self.patch_rect(vision)
        return lsd_tokens(rows, cols, vision.conv_stride)


def lsd_tokens(patch_rows: int, patch_cols: int, conv_stride: int) -> int:
    h, w = patch_rows // conv_stride, patch_cols // conv_stride
    return 1 + h * (w + 1)


def padding_frame_tokens(vision: VisionConfig) -> int:
    """Tokens of an all-padding frame: the official code keeps its top-left 16 x 16 patches."""
    side = min(vision.pad_frame_patches, vision.grid)
    return lsd_tokens(side, side, vision.conv_stride)


def frame_geometry(width: int, height: int, vision: VisionConfig) -> FrameGeometry:
    """Official `compute_basehw_video`, evaluated at the teacher size and scaled to `image_size`."""
    if width <= 0 or height <= 0:
        raise ValueError(f"frame size must be positive, got {width}x{height}")
    size, p = vision.image_size_teacher, vision.patch_teacher
    if width > height:
        val_patch = math.ceil(size * height / width / p)
        new_w, new_h = size, val_patch * p
    else:
        val_patch = math.ceil(size * width / height / p)
        new_w, new_h = val_patch * p, size
    val = val_patch * p
    pre = (size // p - val_patch) // 2 * p
    post = size - pre - val
    r = vision.image_size // vision.image_size_teacher
    return FrameGeometry(new_w * r, new_h * r, pre * r, val * r, post * r, landscape=width > height)


def preprocess_frame(frame: np.ndarray, geometry: FrameGeometry, vision: VisionConfig) -> np.ndarray:
    """One (H, W, 3) uint8 RGB frame -> (4, S, S) float32: normalized RGB + mask."""
    size = vision.image_size
    image = Image.fromarray(frame, "RGB").resize(
        (geometry.resized_width, geometry.resized_height), Image.Resampling.BICUBIC
    )
    mask = np.zeros((size, size), dtype=np.float32)
    if geometry.square:
        canvas = image
        mask[:] = 1.0
    else:
        canvas = Image.new("RGB", (size, size), PAD_COLOR)
        lo, hi = geometry.pad_before, geometry.pad_before + geometry.content
        if geometry.landscape:
            canvas.paste(image, (0, lo))
            mask[lo:hi, :] = 1.0
        else:
            canvas.paste(image, (lo, 0))
            mask[:, lo:hi] = 1.0
    rgb = np.asarray(canvas, dtype=np.uint8).transpose(2, 0, 1).astype(np.float32)
    rgb = (rgb / np.float32(255.0) - _MEAN) / _STD
    return np.concatenate([rgb, mask[None]], axis=0)


def preprocess_frames(frames: Sequence[np.ndarray], vision: VisionConfig) -> np.ndarray:
    """Sampled RGB frames of one video -> (video_frames, 4, S, S) float32, zero frames appended."""
    if not frames:
        raise ValueError("no frames to pre-process")
    if len(frames) > vision.video_frames:
        raise ValueError(f"got {len(frames)} frames, the model takes at most {vision.video_frames}")
    height, width = frames[0].shape[:2]
    geometry = frame_geometry(width, height, vision)
    out = np.zeros((vision.video_frames, 4, vision.image_size, vision.image_size), dtype=np.float32)
    for i, frame in enumerate(frames):
        out[i] = preprocess_frame(frame, geometry, vision)
    return out


def visual_tokens(
    width: int, height: int, vision: VisionConfig, real_frames: int | None = None
) -> dict[str, int]:
    """Visual-token counts for a `width x height` video (`real_frames` decoded frames, the rest padding)."""
    real = vision.video_frames if real_frames is None else min(real_frames, vision.video_frames)
    per_frame = frame_geometry(width, height, vision).tokens_per_frame(vision)
    padded = vision.video_frames - real
    return {
        "per_frame": per_frame,
        "per_padding_frame": padding_frame_tokens(vision),
        "per_video": real * per_frame + padded * padding_frame_tokens(vision),
    }
