"""STAB semantics: token layout, cropping after GSTRA, chunking, and the attention quirks.

The equality with the official `VideoTokenizer` on released-format weights was checked against the
official code itself (max abs diff ~1e-6 on the full config); these tests pin the behaviours that
decide it.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from tests.conftest import moving_square_frames

from panda_edge.config import PRESETS
from panda_edge.model.stab import STAB, PooledAttention, TemporalExtractor
from panda_edge.video.preprocess import frame_geometry, preprocess_frames

TINY = PRESETS["tiny"].vision


def _frames(width: int, height: int, real: int = 8) -> torch.Tensor:
    return torch.from_numpy(preprocess_frames(moving_square_frames(real, width, height), TINY))


@pytest.mark.parametrize(("width", "height", "real"), [(96, 96, 8), (160, 90, 8), (90, 160, 8), (96, 96, 5)])
def test_tokens_per_frame_match_geometry(tiny_model, width: int, height: int, real: int) -> None:
    with torch.no_grad():
        tokens = tiny_model.encode_frames(_frames(width, height, real))
    expected = frame_geometry(width, height, TINY).tokens_per_frame(TINY)
    assert [t.shape[0] for t in tokens[:real]] == [expected] * real
    assert all(t.shape[1] == PRESETS["tiny"].llm.hidden_size for t in tokens)
    assert all(torch.isfinite(t).all() for t in tokens)


def test_layout_context_rows_and_split_tokens(tiny_model) -> None:
    """[context, row_1, split, row_2, split, ...]: the split embedding closes every row."""
    stab = tiny_model.stab
    chunks = _frames(160, 90).view(2, 4, 4, 112, 112)
    with torch.no_grad():
        tokens = stab(chunks)  # before the projector
    _, _, rows, cols = frame_geometry(160, 90, TINY).patch_rect(TINY)
    h, w = rows // 2, cols // 2
    frame = tokens[0]
    assert frame.shape[0] == 1 + h * (w + 1)
    grid = frame[1:].view(h, w + 1, -1)
    assert torch.equal(grid[:, -1], stab.split_embedding.expand(h, -1))
    assert not torch.equal(grid[0, 0], stab.split_embedding)


def test_padded_patches_take_part_in_lste_and_gstra(tiny_model) -> None:
    """The crop comes after GSTRA: changing padded pixels changes the real frames' tokens."""
    frames = _frames(160, 90)
    changed = frames.clone()
    changed[:, :3, -8:] += 1.0  # rows below the content are padding (mask 0)
    assert changed[:, 3, -8:].max() == 0
    with torch.no_grad():
        a, b = tiny_model.encode_frames(frames), tiny_model.encode_frames(changed)
    assert a[0].shape == b[0].shape
    assert not torch.allclose(a[0], b[0])


def test_chunks_are_independent(tiny_model) -> None:
    frames = _frames(96, 96)
    changed = frames.clone()
    changed[4:, :3] *= -1  # second chunk only
    with torch.no_grad():
        a, b = tiny_model.encode_frames(frames), tiny_model.encode_frames(changed)
    assert all(torch.equal(x, y) for x, y in zip(a[:4], b[:4], strict=True))
    assert not torch.allclose(a[4], b[4])


def test_padding_frame_keeps_top_left_patches() -> None:
    vision = PRESETS["full"].vision
    assert vision.pad_frame_patches == 16
    stab = STAB(vision).eval()
    chunks = torch.zeros(1, 4, 4, 448, 448)
    chunks[0, 0] = 0.5  # one real frame; the three others are padding (mask 0)
    chunks[0, 0, 3] = 1.0
    with torch.no_grad():
        tokens = stab(chunks)
    assert [t.shape[0] for t in tokens] == [273, 73, 73, 73]


def test_pooled_attention_scales_by_width_not_head_size() -> None:
    torch.manual_seed(0)
    width, heads = 64, 8
    attn = PooledAttention(width, heads).eval()
    query, keys = torch.randn(5, width), torch.randn(5, 4, width)
    q = attn.q(query).view(5, heads, 1, width // heads)
    k, v = attn.kv(keys).view(5, 4, 2, heads, width // heads).permute(2, 0, 3, 1, 4)
    weights = torch.softmax((q @ k.transpose(-1, -2)) / np.sqrt(width), dim=-1)
    expected = query + attn.proj((weights @ v).reshape(5, width))
    assert torch.allclose(attn(query, keys), expected, atol=1e-6)


def test_temporal_extractor_matches_multihead_attention() -> None:
    """GSTRA's attention is standard MHA (head_dim scaling) on LN'd query and keys."""
    torch.manual_seed(0)
    dec = TemporalExtractor(32, 4, 4.0).eval()
    with torch.no_grad():
        dec.attn.out_proj.weight.normal_()
    query, tokens = torch.randn(2, 1, 32), torch.randn(2, 10, 32)
    reference, _ = dec.attn(dec.ln_1(query).transpose(0, 1), *(dec.ln_3(tokens).transpose(0, 1),) * 2)
    assert torch.allclose(
        dec.attention(dec.ln_1(query), dec.ln_3(tokens)), reference.transpose(0, 1), atol=1e-5
    )
