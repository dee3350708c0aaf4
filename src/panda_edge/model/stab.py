"""STAB, the Spatio-Temporal Alignment Block of Video-Panda, as the official `VideoTokenizer` defines it.

Parameter names match the released checkpoints (prefix `model.video_tower.`). Forward, per chunk of
`chunk_frames` frames (4 channels: normalized RGB + padding mask):

1. patch embedding -> x, and a copy P;
2. LSTE: x += lmhra1(x); x += dpe(x)           (lmhra2 exists in checkpoints but is not used);
3. GSTRA: one query (temporal_cls_token) attends over all frames' patches of the chunk -> G;
4. dense connection: x += P;
5. per frame: crop to the real-pixel patches, LSD (2x2 windows -> 1 token, query = window average)
   then FSRA (class_embedding attends over the LSD tokens) -> F;
6. context token = proj((1 - sigmoid(balance)) * G + sigmoid(balance) * F);
7. tokens = [context, row_1, split, row_2, split, ...].

LSD and FSRA scale their logits by width ** -0.5 (not the head size); GSTRA uses head_dim ** -0.5.
"""

from __future__ import annotations

from collections import OrderedDict

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from panda_edge.config import VisionConfig


class QuickGELU(nn.Module):
    def forward(self, x: Tensor) -> Tensor:
        return x * torch.sigmoid(1.702 * x)


class LocalMHRA(nn.Module):
    """Local temporal relation (UniFormerV2): BN -> 1x1x1 down -> depthwise temporal k3 -> 1x1x1 up."""

    def __init__(self, width: int, reduced: int) -> None:
        super().__init__()
        self.pos_embed = nn.Sequential(
            nn.BatchNorm3d(width),
            nn.Conv3d(width, reduced, kernel_size=1),
            nn.Conv3d(reduced, reduced, kernel_size=(3, 1, 1), padding=(1, 0, 0), groups=reduced),
            nn.Conv3d(reduced, width, kernel_size=1),
        )

    def forward(self, x: Tensor) -> Tensor:
        return self.pos_embed(x)


class TemporalExtractor(nn.Module):
    """GSTRA's pre-LN cross-attention block: a query token attends over a chunk's tokens, then an MLP.

    `attn` is an `nn.MultiheadAttention` only for its parameter names and shapes.
    """

    def __init__(self, width: int, heads: int, mlp_factor: float) -> None:
        super().__init__()
        self.heads = heads
        self.attn = nn.MultiheadAttention(width, heads)
        self.ln_1 = nn.LayerNorm(width)
        self.ln_2 = nn.LayerNorm(width)
        self.ln_3 = nn.LayerNorm(width)
        hidden = round(mlp_factor * width)
        self.mlp = nn.Sequential(
            OrderedDict(
                [
                    ("c_fc", nn.Linear(width, hidden)),
                    ("gelu", QuickGELU()),
                    ("dropout", nn.Dropout(0.5)),
                    ("c_proj", nn.Linear(hidden, width)),
                ]
            )
        )

    def attention(self, query: Tensor, tokens: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """query (B, 1, C), tokens (B, N, C), key_mask (B, N) bool or None -> (B, 1, C)."""
        b, n, c = tokens.shape
        hd = c // self.heads
        w_q, w_k, w_v = self.attn.in_proj_weight.chunk(3)
        b_q, b_k, b_v = self.attn.in_proj_bias.chunk(3)
        q = F.linear(query, w_q, b_q).view(b, 1, self.heads, hd).transpose(1, 2)
        k = F.linear(tokens, w_k, b_k).view(b, n, self.heads, hd).transpose(1, 2)
        v = F.linear(tokens, w_v, b_v).view(b, n, self.heads, hd).transpose(1, 2)
        logits = q @ k.transpose(-2, -1) / (hd**0.5)
        if key_mask is not None:
            logits = logits.masked_fill(~key_mask[:, None, None, :], float("-inf"))
        out = (logits.softmax(dim=-1) @ v).transpose(1, 2).reshape(b, 1, c)
        return self.attn.out_proj(out)

    def forward(self, query: Tensor, tokens: Tensor) -> Tensor:
        x = query + self.attention(self.ln_1(query), self.ln_3(tokens))
        return x + self.mlp(self.ln_2(x))


class PooledAttention(nn.Module):
    """One query per group attends over the group's keys; the query itself is the residual.

    LSD: query = a window's average, keys = the window's patches. FSRA: query = class_embedding,
    keys = the frame's LSD tokens. Logits scale by width ** -0.5, as in the official code.
    """

    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.scale = width**-0.5
        self.q = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, width, bias=False))
        self.kv = nn.Sequential(nn.LayerNorm(width), nn.Linear(width, 2 * width, bias=False))
        self.proj = nn.Linear(width, width)

    def forward(self, query: Tensor, keys: Tensor, key_mask: Tensor | None = None) -> Tensor:
        """query (..., C), keys (..., N, C), key_mask (..., N) bool or None -> (..., C)."""
        *lead, n, c = keys.shape
        hd = c // self.heads
        q = self.q(query).reshape(*lead, self.heads, 1, hd)
        k, v = self.kv(keys).reshape(*lead, n, 2, self.heads, hd).movedim(-3, 0).unbind(0)
        k, v = k.transpose(-3, -2), v.transpose(-3, -2)  # (..., heads, N, hd)
        logits = (q * self.scale * k).sum(-1)  # (..., heads, N)
        if key_mask is not None:
            logits = logits.masked_fill(~key_mask[..., None, :], float("-inf"))
        out = (logits.softmax(dim=-1).unsqueeze(-1) * v).sum(-2)  # (..., heads, hd)
        return query + self.proj(out.reshape(*lead, c))


class STAB(nn.Module):
    """The video tower: per-frame visual tokens (before the projector) for chunks of frames."""

    def __init__(self, vision: VisionConfig) -> None:
        super().__init__()
        self.vision = vision
        c = vision.width
        self.patch_embedding = nn.Conv2d(3, c, kernel_size=vision.patch, stride=vision.patch, bias=False)
        self.class_embedding = nn.Parameter(torch.randn(c))
        self.split_embedding = nn.Parameter(torch.randn(c))
        self.temporal_cls_token = nn.Parameter(torch.zeros(1, 1, c))
        self.lmhra1 = LocalMHRA(c, vision.lmhra_width)
        self.lmhra2 = LocalMHRA(c, vision.lmhra_width)  # in released checkpoints, unused in forward
        self.dpe = nn.Conv3d(c, c, kernel_size=3, padding=1, groups=c)
        self.dec = TemporalExtractor(c, vision.dec_heads, vision.mlp_factor)
        self.proj = nn.Sequential(nn.LayerNorm(c), nn.Dropout(0.5), nn.Linear(c, c))
        self.balance = nn.Parameter(torch.zeros(c))
        self.local_attention = PooledAttention(c, vision.attn_heads)
        self.global_attention = PooledAttention(c, vision.attn_heads)
        self._init_like_official()

    def _init_like_official(self) -> None:
        """Zero-init of the residual branches, as the official constructor does."""
        for module in (self.lmhra1, self.lmhra2):
            nn.init.zeros_(module.pos_embed[3].weight)
            nn.init.zeros_(module.pos_embed[3].bias)
        nn.init.zeros_(self.dpe.bias)
        nn.init.zeros_(self.dec.attn.out_proj.weight)
        nn.init.zeros_(self.dec.attn.out_proj.bias)
        nn.init.zeros_(self.dec.mlp.c_proj.weight)
        nn.init.zeros_(self.dec.mlp.c_proj.bias)

    # --- stages -------------------------------------------------------------------------------------

    def spatiotemporal(self, pixels: Tensor, chunk_frames: int) -> tuple[Tensor, Tensor | None]:
        """Patch embedding, LSTE, GSTRA and the dense connection.

        pixels (B*T, 3, S, S) -> (per-frame features (B*T, C, h, w), chunk tokens G (B, C) or None).
        """
        patches = self.patch_embedding(pixels)
        if chunk_frames == 1:
            return patches, None
        bt, c, h, w = patches.shape
        x = patches.view(bt // chunk_frames, chunk_frames, c, h, w).transpose(1, 2)  # B C T h w
        x = x + self.lmhra1(x)
        x = x + self.dpe(x)
        tokens = x.flatten(2).transpose(1, 2)  # (B, T*h*w, C), ordered t, h, w
        query = self.temporal_cls_token.expand(x.shape[0], 1, c)
        chunk_token = self.dec(query, tokens)[:, 0]
        x = x.transpose(1, 2).reshape(bt, c, h, w) + patches
        return x, chunk_token

    def local_tokens(self, features: Tensor) -> tuple[Tensor, int, int]:
        """LSD on cropped frames (G, C, H, W) -> ((G, h*w, C), h, w) with h = H // s, w = W // s."""
        s = self.vision.conv_stride
        g, c = features.shape[:2]
        h, w = features.shape[2] // s, features.shape[3] // s
        window_mean = (
            F.avg_pool2d(features, kernel_size=s, stride=s).flatten(2).transpose(1, 2)
        )  # (G, h*w, C)
        windows = features[:, :, : h * s, : w * s].reshape(g, c, h, s, w, s).permute(0, 2, 4, 3, 5, 1)
        windows = windows.reshape(g, h * w, s * s, c)
        return self.local_attention(window_mean, windows), h, w

    def crop_rect(self, patch_mask: Tensor) -> tuple[int, int, int, int]:
        """(row0, col0, row1, col1), inclusive, of a frame's real patches: first and last non-zero
        patch of the mask; an all-padding frame keeps its top-left `pad_frame_patches` square."""
        if patch_mask.sum() == 0:
            last = min(self.vision.pad_frame_patches, *patch_mask.shape) - 1
            return 0, 0, last, last
        nonzero = torch.nonzero(patch_mask, as_tuple=False)
        (r1, c1), (r2, c2) = nonzero[0].tolist(), nonzero[-1].tolist()
        return r1, c1, r2, c2

    def frame_tokens(
        self, features: Tensor, rect: tuple[int, int, int, int], chunk_tokens: Tensor | None
    ) -> Tensor:
        """Crop, LSD, FSRA, context fusion and layout for frames sharing one crop -> (G, 1 + h*(w+1), C)."""
        r1, c1, r2, c2 = rect
        local, h, w = self.local_tokens(features[:, :, r1 : r2 + 1, c1 : c2 + 1])
        g, _, c = local.shape
        frame_token = self.global_attention(self.class_embedding.expand(g, c), local)  # (G, C)
        if chunk_tokens is not None:
            weight = torch.sigmoid(self.balance)
            frame_token = self.proj((1 - weight) * chunk_tokens + weight * frame_token)
        split = self.split_embedding.expand(g, h, 1, c)
        rows = torch.cat([local.view(g, h, w, c), split], dim=2).reshape(g, h * (w + 1), c)
        return torch.cat([frame_token[:, None], rows], dim=1)

    def patch_masks(self, frames: Tensor) -> Tensor:
        """(N, 4, S, S) frames -> (N, S/patch, S/patch) share of real pixels per patch."""
        return F.avg_pool2d(frames[:, 3:], kernel_size=self.vision.patch, stride=self.vision.patch)[:, 0]

    def forward(self, chunks: Tensor, projector: nn.Module | None = None) -> list[Tensor]:
        """chunks (B, T, 4, S, S) -> one (tokens, C or LLM width) tensor per frame, in frame order.

        Frames whose real patches have the same rectangle go through LSD and FSRA together.
        """
        b, t = chunks.shape[:2]
        frames = chunks.flatten(0, 1)
        features, chunk_tokens = self.spatiotemporal(frames[:, :3], t)
        groups: dict[tuple[int, int, int, int], list[int]] = {}
        for i, mask in enumerate(self.patch_masks(frames)):
            groups.setdefault(self.crop_rect(mask), []).append(i)
        out: dict[int, Tensor] = {}
        for rect, members in groups.items():
            index = torch.tensor(members)
            fused = None if chunk_tokens is None else chunk_tokens[index // t]
            tokens = self.frame_tokens(features[index], rect, fused)
            if projector is not None:
                tokens = projector(tokens)
            # unbind, not tokens[j]: one backward node for the group instead of one full-size
            # zero-filled gradient per frame.
            for i, frame in zip(members, tokens.unbind(0), strict=True):
                out[i] = frame
        return [out[i] for i in range(b * t)]


def build_projector(kind: str, in_width: int, out_width: int) -> nn.Module:
    """The vision -> LLM projector (`mm_projector_type`): `linear` or `mlp<N>x_gelu`."""
    if kind == "linear":
        return nn.Linear(in_width, out_width)
    if kind.startswith("mlp") and kind.endswith("x_gelu"):
        depth = int(kind[3:-6])
        layers: list[nn.Module] = [nn.Linear(in_width, out_width)]
        for _ in range(1, depth):
            layers += [nn.GELU(), nn.Linear(out_width, out_width)]
        return nn.Sequential(*layers)
    raise ValueError(f"unknown projector type '{kind}'")
