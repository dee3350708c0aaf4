"""The distillation loss of the paper (eq. 19): negative cosine between predicted and teacher tokens.

The predicted visual tokens are the LLM's output hidden states at the positions of each frame's
LSD grid (context and split tokens excluded), mapped to the teacher's width by a linear head; the
teacher's patch features are cropped to the frame's real patches and average-pooled to the same grid.
Any module that maps frames (N, 3, S, S) to patch features (N, D, S/patch, S/patch) can teach.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class DistillationHead(nn.Module):
    def __init__(self, llm_width: int, teacher_width: int) -> None:
        super().__init__()
        self.proj = nn.Linear(llm_width, teacher_width)

    def forward(self, hidden: Tensor) -> Tensor:
        return self.proj(hidden)


def negative_cosine(pred: Tensor, teacher: Tensor) -> Tensor:
    """eq. 19: -(1/M) sum_i cos(v_pred_i, v_teacher_i) over M tokens (rows)."""
    return -F.cosine_similarity(pred, teacher, dim=-1).mean()


def teacher_grid(features: Tensor, rect: tuple[int, int, int, int], conv_stride: int) -> Tensor:
    """Teacher map (D, gh, gw) -> (h*w, D) on the frame's LSD grid."""
    r1, c1, r2, c2 = rect
    crop = features[:, r1 : r2 + 1, c1 : c2 + 1]
    return F.avg_pool2d(crop[None], conv_stride, conv_stride)[0].flatten(1).T


def grid_positions(start: int, h: int, w: int) -> torch.Tensor:
    """Sequence positions of a frame's LSD tokens, given where the frame's tokens start."""
    rows = torch.arange(h)[:, None] * (w + 1) + torch.arange(w)[None, :]
    return start + 1 + rows.flatten()
