"""Pre-processing geometry and normalization (official `process_video_images`)."""

from __future__ import annotations

import numpy as np
import pytest

from panda_edge.config import CLIP_MEAN, CLIP_STD, PRESETS
from panda_edge.video.preprocess import (
    PAD_COLOR,
    frame_geometry,
    preprocess_frames,
    visual_tokens,
)

FULL = PRESETS["full"].vision
TINY = PRESETS["tiny"].vision


@pytest.mark.parametrize(
    ("width", "height", "resized", "pad", "per_frame"),
    [
        (448, 448, (448, 448), 0, 273),
        (1920, 1080, (448, 252), 84, 154),  # 16:9: ceil(224*9/16/14) = 9 patches -> 252 px
        (1080, 1920, (252, 448), 84, 161),  # 9:16
        (640, 480, (448, 336), 56, 205),  # 4:3
        (1000, 100, (448, 56), 196, 35),  # extreme: a 56-px band, 4 patch rows -> 2 LSD rows
        (641, 640, (448, 448), 0, 273),  # nearly square rounds up to square
    ],
)
def test_geometry_and_token_counts(width, height, resized, pad, per_frame) -> None:
    g = frame_geometry(width, height, FULL)
    assert (g.resized_width, g.resized_height) == resized
    assert g.pad_before == pad
    assert g.pad_before + g.content + g.pad_after == FULL.image_size
    assert g.pad_before % 28 == 0 and g.content % 28 == 0  # whole LSD windows
    assert g.tokens_per_frame(FULL) == per_frame


def test_video_token_totals() -> None:
    assert visual_tokens(448, 448, FULL)["per_video"] == 2184
    short = visual_tokens(448, 448, FULL, real_frames=5)
    assert short["per_video"] == 5 * 273 + 3 * 73  # padding frames keep 16x16 patches


def test_landscape_frame_is_padded_with_mean_color_and_masked() -> None:
    frame = np.zeros((90, 160, 3), dtype=np.uint8)
    frame[..., 0] = 255
    out = preprocess_frames([frame] * 3, TINY)
    assert out.shape == (8, 4, 112, 112) and out.dtype == np.float32
    g = frame_geometry(160, 90, TINY)
    lo, hi = g.pad_before, g.pad_before + g.content
    mask = out[0, 3]
    assert (lo, hi) == (0, 84)  # at 56 px the odd patch of padding goes after the content
    assert mask[lo:hi].min() == 1.0 and mask[hi:].max() == 0.0
    pad_value = (PAD_COLOR[0] / 255 - CLIP_MEAN[0]) / CLIP_STD[0]
    assert np.allclose(out[0, 0, hi:], pad_value, atol=1e-6)
    assert np.allclose(out[0, 0, lo + 2], (1 - CLIP_MEAN[0]) / CLIP_STD[0], atol=1e-5)
    assert not out[3:].any()  # padding frames are all zero, mask included


def test_portrait_pads_columns() -> None:
    out = preprocess_frames([np.full((160, 90, 3), 128, np.uint8)], TINY)
    g = frame_geometry(90, 160, TINY)
    lo, hi = g.pad_before, g.pad_before + g.content
    assert out[0, 3, :, hi:].max() == 0.0 and hi < 112
    assert out[0, 3, :, lo:hi].min() == 1.0


def test_too_many_frames_rejected() -> None:
    with pytest.raises(ValueError, match="at most 8"):
        preprocess_frames([np.zeros((8, 8, 3), np.uint8)] * 9, TINY)
