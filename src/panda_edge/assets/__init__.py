"""The embedded default model (`--checkpoint tiny`)."""

from __future__ import annotations

from pathlib import Path

from panda_edge.errors import CheckpointError

TINY_DIR = Path(__file__).parent / "tiny"


def tiny_checkpoint() -> Path:
    if not (TINY_DIR / "config.json").is_file():
        raise CheckpointError("the embedded tiny model is not part of this install yet")
    return TINY_DIR
