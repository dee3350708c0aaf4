"""STAB + projector as the exported graph holds them: parameters and engine memory (no torch).

The parameters are counted from the configuration, module by module as `model/stab.py` builds
them (lmhra2 left out: the exported graph does not use it), split into the weight matrices that
INT8 stores in 8 bits and everything else. Activation memory is an estimate: the float32 input
and output buffers plus three times the largest intermediate (the key/value projections of GSTRA
over a chunk, or of LSD over all windows, or the projector's hidden states) at two bytes; a
built engine's own figure (`device_memory_bytes` in its record) replaces it when the bundle has one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from panda_edge.backends import FP32, INT8, TRT, check_precision
from panda_edge.errors import PandaError

LIVE_INTERMEDIATES = 3  # the largest intermediate, its producer's input and the next op's output


@dataclass(frozen=True)
class VisionParameters:
    matrices: int  # Conv / Linear weights: what INT8 quantizes
    other: int  # biases, norms, embeddings, the depthwise temporal convolutions

    @property
    def total(self) -> int:
        return self.matrices + self.other


def vision_parameters(vision: dict[str, Any], projector_type: str, hidden: int) -> VisionParameters:
    """Parameters of STAB (without lmhra2) + projector for a VisionConfig's fields."""
    c, p = vision["width"], vision["patch"]
    r = int(c // vision.get("dw_reduction", 1.5))
    mlp = round(vision.get("mlp_factor", 4.0) * c)
    matrices = c * 3 * p * p  # patch embedding, no bias
    other = 4 * c  # class / split embeddings, temporal cls token, balance
    # lmhra1: BatchNorm, 1x1x1 down, depthwise temporal k3, 1x1x1 up
    matrices += c * r + r * c
    other += 2 * c + r + (3 * r + r) + c
    other += 27 * c + c  # dpe: depthwise 3x3x3
    # dec (GSTRA): in_proj, out_proj, three LayerNorms, MLP
    matrices += 3 * c * c + c * c + c * mlp + mlp * c
    other += 3 * c + c + 6 * c + mlp + c
    # proj: LayerNorm + Linear
    matrices += c * c
    other += 2 * c + c
    # local_attention (LSD) and global_attention (FSRA): q (LN + Linear), kv (LN + Linear), proj
    matrices += 2 * (c * c + 2 * c * c + c * c)
    other += 2 * (2 * c + 2 * c + c)
    pm, po = projector_parameters(projector_type, c, hidden)
    return VisionParameters(matrices + pm, other + po)


def projector_parameters(projector_type: str, width: int, hidden: int) -> tuple[int, int]:
    """(matrices, biases) of `linear` or `mlp{N}x_gelu`."""
    if projector_type == "linear":
        return width * hidden, hidden
    match = re.fullmatch(r"mlp(\d+)x_gelu", projector_type)
    if not match:
        raise PandaError(f"unknown projector type '{projector_type}'")
    depth = int(match.group(1))
    return width * hidden + (depth - 1) * hidden * hidden, depth * hidden


def engine_weight_bytes(params: VisionParameters, precision: str) -> int:
    if check_precision(TRT, precision) == INT8:
        return params.matrices + 2 * params.other
    return (4 if precision == FP32 else 2) * params.total


def activation_bytes(vision: dict[str, Any], hidden: int, precision: str) -> int:
    """I/O buffers (float32) + LIVE_INTERMEDIATES x the largest intermediate at the engine's width."""
    frames, size, patch = vision["video_frames"], vision["image_size"], vision["patch"]
    c, stride, chunk = vision["width"], vision["conv_stride"], vision["chunk_frames"]
    grid = size // patch
    windows = (grid // stride) ** 2
    tokens = 1 + (grid // stride) * (grid // stride + 1)
    io = 4 * (frames * 4 * size * size + frames * tokens * hidden)
    gstra_kv = (frames // chunk) * chunk * grid * grid * 2 * c
    lsd_kv = frames * windows * stride * stride * 2 * c
    projector = frames * tokens * hidden
    width = 4 if precision == FP32 else 2
    return io + LIVE_INTERMEDIATES * max(gstra_kv, lsd_kv, projector) * width


def visual_tokens_per_video(vision: dict[str, Any]) -> int:
    """Tokens the LLM reads for one video of square frames: frames x (1 + g(g+1))."""
    g = vision["image_size"] // vision["patch"] // vision["conv_stride"]
    return vision["video_frames"] * (1 + g * (g + 1))
