"""STAB + projector for one video as a static-shape module: what goes into `stab.onnx`, and what the
PyTorch vision backend runs eagerly (so export and runtime share it from here, below both).

The reference crops every frame to its real patches after GSTRA, which makes token counts depend on
the data. This module computes LSD on the full grid instead and gives FSRA a key mask of the windows
inside the crop rectangle; because the rectangle starts on an LSD window boundary (see
`token_layout.py`), the windows inside it are exactly the reference's windows, and the
runtime drops the rest in numpy. Every stage calls the reference's own submodules; the only new
weights are lmhra1's BatchNorm folded into the 1x1x1 convolution after it.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import Tensor, nn

from panda_edge.model.stab import STAB
from panda_edge.token_layout import TokenLayout


def fold_batchnorm(bn: nn.BatchNorm3d, conv: nn.Conv3d) -> nn.Conv3d:
    """conv(bn(x)) as one convolution (eval-mode BN statistics).

    bn(x) = a * x + b per channel, with a = gamma / sqrt(var + eps) and b = beta - mean * a, so
    conv(bn(x)) = (W * a) x + (W b + bias). Exact only for a 1x1x1, unpadded, ungrouped conv: with
    a larger kernel, zero padding would meet b at the borders.
    """
    if conv.kernel_size != (1, 1, 1) or conv.groups != 1 or any(conv.padding):
        raise ValueError("only a 1x1x1 ungrouped, unpadded convolution can absorb a preceding BatchNorm")
    with torch.no_grad():
        scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
        shift = bn.bias.double() - bn.running_mean.double() * scale
        weight = conv.weight.double()  # (out, in, 1, 1, 1)
        bias = conv.bias.double() if conv.bias is not None else torch.zeros(conv.out_channels).double()
        folded = nn.Conv3d(conv.in_channels, conv.out_channels, kernel_size=1, dtype=torch.float64)
        folded.weight.copy_(weight * scale.view(1, -1, 1, 1, 1))
        folded.bias.copy_(bias + weight.flatten(1) @ shift)
    return folded.to(device=conv.weight.device, dtype=conv.weight.dtype)


def fold_lmhra(lmhra: nn.Module) -> nn.Sequential:
    """LocalMHRA's branch with its BatchNorm folded; reuses the depthwise and up convolutions."""
    bn, down, *rest = lmhra.pos_embed
    return nn.Sequential(fold_batchnorm(bn, down), *rest)


def _layer_norm_primitive(ln: nn.LayerNorm, x: Tensor) -> Tensor:
    """LayerNorm as ReduceMean/Sub/Mul/Sqrt/Div/Add, for parsers without LayerNormalization."""
    mean = x.mean(dim=-1, keepdim=True)
    centered = x - mean
    variance = (centered * centered).mean(dim=-1, keepdim=True)
    return centered / torch.sqrt(variance + ln.eps) * ln.weight + ln.bias


@contextmanager
def primitive_layer_norms(module: nn.Module) -> Iterator[None]:
    """Within the block, every LayerNorm under `module` runs (and exports) as primitive ops.

    Patches the instances' `forward` and restores it, so the shared reference modules are untouched
    afterwards.
    """
    patched = [m for m in module.modules() if isinstance(m, nn.LayerNorm)]
    for m in patched:
        if len(m.normalized_shape) != 1 or not m.elementwise_affine:
            raise ValueError(f"cannot decompose {m}: expected one normalized dim with affine weights")
        m.forward = lambda x, m=m: _layer_norm_primitive(m, x)
    try:
        yield
    finally:
        for m in patched:
            del m.forward


class StabForOnnx(nn.Module):
    """frames (video_frames, 4, S, S) -> visual_tokens (video_frames, 1 + g(g+1), hidden), static.

    Shares `stab` and `projector` (no copy) and puts them in eval mode, as export needs.
    """

    def __init__(self, stab: STAB, projector: nn.Module) -> None:
        super().__init__()
        self.stab = stab
        self.projector = projector
        self.lmhra = fold_lmhra(stab.lmhra1)
        v = stab.vision
        # Sizes as Python ints, not traced tensor shapes: the exporter then writes constant shapes.
        self.frames, self.width, self.chunk_frames = v.video_frames, v.width, v.chunk_frames
        g = (v.image_size // v.patch) // v.conv_stride
        side = min(v.pad_frame_patches, v.grid) // v.conv_stride
        pad_windows = torch.zeros(g, g)
        pad_windows[:side, :side] = 1.0
        self.register_buffer("pad_windows", pad_windows, persistent=False)
        # Broadcasts are written as gathers with constant indices: the TorchScript exporter writes
        # `expand`/`repeat` with a computed shape that ONNX shape inference cannot resolve.
        self.register_buffer("zeros", torch.zeros(self.frames, dtype=torch.long), persistent=False)
        self.register_buffer(
            "split_index", torch.zeros(self.frames, g, 1, dtype=torch.long), persistent=False
        )
        chunk_of_frame = torch.arange(self.frames) // self.chunk_frames
        self.register_buffer("chunk_of_frame", chunk_of_frame, persistent=False)
        self.to(stab.patch_embedding.weight.device)  # the constants beside weights on a GPU
        self.eval()

    def layout(self) -> TokenLayout:
        """The geometry the runtime needs to pick the reference's tokens out of this output."""
        weight = self.stab.patch_embedding.weight
        with torch.no_grad():
            probe = torch.zeros(1, self.width, device=weight.device, dtype=weight.dtype)
            hidden = self.projector(probe).shape[-1]
        return TokenLayout.from_config(self.stab.vision, hidden)

    def spatiotemporal(self, pixels: Tensor) -> tuple[Tensor, Tensor | None]:
        """`STAB.spatiotemporal` with the folded lmhra1: patch embed, LSTE, GSTRA, dense connection."""
        stab, n, c, t = self.stab, self.frames, self.width, self.chunk_frames
        patches = stab.patch_embedding(pixels)
        if t == 1:
            return patches, None
        h, w = patches.shape[2:]
        x = patches.view(n // t, t, c, h, w).transpose(1, 2)
        x = x + self.lmhra(x)
        x = x + stab.dpe(x)
        tokens = x.flatten(2).transpose(1, 2)
        query = stab.temporal_cls_token[self.zeros[: n // t]]  # (B, 1, C)
        chunk_tokens = stab.dec(query, tokens)[:, 0]
        x = x.transpose(1, 2).reshape(n, c, h, w) + patches
        return x, chunk_tokens[self.chunk_of_frame]  # each frame gets its chunk's token

    def window_mask(self, frames: Tensor) -> Tensor:
        """(N, g*g) bool: LSD windows inside the frame's crop rectangle (`STAB.crop_rect`'s rule).

        A window is kept when all its patch rows and columns lie between the first and last real
        ones; an all-padding frame keeps the top-left `pad_frame_patches` square. Tensor ops only.
        """
        s = self.stab.vision.conv_stride
        g = self.pad_windows.shape[0]
        real = (self.stab.patch_masks(frames) != 0).float()  # (N, grid, grid)
        rows, cols = real.amax(dim=2), real.amax(dim=1)  # (N, grid): any real patch in the row / column
        any_real = rows.amax(dim=1)[:, None, None] > 0
        rows = rows[:, : g * s].reshape(-1, g, s).amin(dim=2)  # (N, g): window rows fully inside
        cols = cols[:, : g * s].reshape(-1, g, s).amin(dim=2)
        inside = rows[:, :, None] * cols[:, None, :]
        return torch.where(any_real, inside, self.pad_windows).flatten(1) > 0

    def forward(self, frames: Tensor) -> Tensor:
        stab, n, c = self.stab, self.frames, self.width
        features, chunk_tokens = self.spatiotemporal(frames[:, :3])
        local, h, w = stab.local_tokens(features)  # (N, g*g, C), full grid
        frame_token = stab.global_attention(
            stab.class_embedding[None][self.zeros], local, self.window_mask(frames)
        )
        if chunk_tokens is not None:  # context fusion, as STAB.frame_tokens
            weight = torch.sigmoid(stab.balance)
            frame_token = stab.proj((1 - weight) * chunk_tokens + weight * frame_token)
        split = stab.split_embedding[None][self.split_index]  # (N, g, 1, C)
        rows = torch.cat([local.view(n, h, w, c), split], dim=2).reshape(n, h * (w + 1), c)
        return self.projector(torch.cat([frame_token[:, None], rows], dim=1))
