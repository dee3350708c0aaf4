"""The embedded default model (`--checkpoint tiny`): a tiny Video-Panda trained on the toy world.

Reproduce it with the command in TINY_TRAINING["command"]; the weights ship in float16 (the
reference computes in float32) to stay under 10 MB.
"""

from __future__ import annotations

from pathlib import Path

from panda_edge.errors import CheckpointError

TINY_DIR = Path(__file__).parent / "tiny"
TINY_TRAINING = {
    "videos": 1200,
    "seed": 0,
    "seconds": 243,  # 2 threads, idle machine (train_log.json)
    "heldout_exact_match": 0.796,  # 696 questions, the float32 checkpoint
    "command": "panda toyworld --out toy --videos 1200 --seed 0 && "
    "panda train --preset tiny --data toy --out tiny-ckpt --seed 0 --teacher toyworld",
}


def tiny_checkpoint() -> Path:
    if not (TINY_DIR / "config.json").is_file():
        raise CheckpointError(f"the embedded tiny model is missing from {TINY_DIR}; reinstall panda-edge")
    return TINY_DIR
