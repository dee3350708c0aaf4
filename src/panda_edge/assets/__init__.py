"""The embedded default model (`--checkpoint tiny`): a tiny Video-Panda trained on the toy world.

Reproduce it with the command in TINY_TRAINING["command"] (recipe: train/recipe.py); the weights
ship in float16 (the reference computes in float32) to stay under 10 MB.
"""

from __future__ import annotations

from pathlib import Path

from panda_edge.errors import CheckpointError

TINY_DIR = Path(__file__).parent / "tiny"
TINY_TRAINING = {
    "videos": 1200,
    "seed": 0,
    "seconds": 565,  # the whole command, 2 threads, idle 2-core Xeon (AVX-512/AMX)
    "heldout_exact_match": 0.9856,  # 696 questions, these float16 weights (the float32 checkpoint alike)
    "command": "panda toyworld --out toy --videos 1200 --seed 0 && "
    "panda train --preset tiny --data toy --out tiny-ckpt --seed 0 --teacher toyworld --save-dtype fp16",
    # tiny-ckpt/model.safetensors as the command writes it where the CPU's kernels match these
    # (benchmarks/tiny_reproduction.py compares)
    "weights_sha256": "b2723cd40a8a414ae1816433df5d35959afb7531da30d433dfaafcac1a11a34f",
}


def tiny_checkpoint() -> Path:
    if not (TINY_DIR / "config.json").is_file():
        raise CheckpointError(f"the embedded tiny model is missing from {TINY_DIR}; reinstall panda-edge")
    return TINY_DIR
