"""Shared fixtures: a small trained tokenizer, a random tiny model and its checkpoint, real videos."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from panda_edge.config import PRESETS, ModelConfig
from panda_edge.prompt import PromptTokenizer
from panda_edge.video.encode import write_video

CORPUS = [
    "What color is the ring?",
    "Which direction does the red square move?",
    "How many shapes are in the video at the end?",
    "Which shape appeared first, the ring or the cross?",
    "red green blue yellow left right up down square ring cross appear disappear 1 2 3",
] * 10


@pytest.fixture(scope="session")
def tokenizer_file(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from panda_edge.train.tokenizer import train_tokenizer

    return train_tokenizer(CORPUS, tmp_path_factory.mktemp("tok") / "tokenizer.model", vocab_size=512)


def random_tiny_model(tokenizer_file: Path, config: ModelConfig | None = None, seed: int = 0):
    """A tiny VideoPanda with every weight random (the official zero-inits would hide bugs)."""
    from panda_edge.model.videopanda import VideoPanda

    torch.manual_seed(seed)
    model = VideoPanda(config or PRESETS["tiny"], PromptTokenizer(tokenizer_file))
    with torch.no_grad():
        for p in model.stab.parameters():
            p.normal_(0, 0.3 if p.ndim > 1 else 0.5)
        for name, b in model.stab.named_buffers():
            if name.endswith("running_mean"):
                b.normal_(0, 0.2)
            elif name.endswith("running_var"):
                b.uniform_(0.5, 1.5)
    return model.eval()


@pytest.fixture(scope="session")
def tiny_model(tokenizer_file: Path):
    return random_tiny_model(tokenizer_file)


@pytest.fixture(scope="session")
def tiny_checkpoint(tiny_model, tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("ckpt") / "tiny-random"
    tiny_model.save_pretrained(directory)
    return directory


def moving_square_frames(n: int, width: int, height: int, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    frames = []
    for i in range(n):
        frame = np.full((height, width, 3), 230, dtype=np.uint8)
        x = int(i * (width - 16) / max(n - 1, 1))
        frame[height // 3 : height // 3 + 16, x : x + 16] = rng.integers(0, 255, 3, dtype=np.uint8)
        frames.append(frame)
    return frames


@pytest.fixture
def make_video(tmp_path: Path):
    def make(name: str = "clip.mp4", n: int = 16, width: int = 96, height: int = 96, fps: int = 8) -> Path:
        path = tmp_path / name
        write_video(path, moving_square_frames(n, width, height), fps=fps)
        return path

    return make


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded tiny model exported as users run it: ONNX graph + the q8_0 GGUF `panda run` picks."""
    from panda_edge.export.llm_gguf.export_gguf import export_gguf
    from panda_edge.export.stab_onnx.export_onnx import export_bundle

    directory = tmp_path_factory.mktemp("tiny-bundle") / "tiny"
    export_bundle("tiny", directory)
    export_gguf("tiny", directory, "q8_0")
    return directory


@pytest.fixture(scope="session")
def f32_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The embedded tiny model for the runtime's parity: ONNX graph + f32 (e2e) and q8_0 GGUFs. Shared:
    tests that change a bundle copy it first."""
    from panda_edge.export.llm_gguf.export_gguf import export_gguf
    from panda_edge.export.stab_onnx.export_onnx import export_bundle

    directory = tmp_path_factory.mktemp("f32-bundle") / "bundle"
    export_bundle("tiny", directory)
    for gguf_type in ("f32", "q8_0"):
        export_gguf("tiny", directory, gguf_type)
    return directory


@pytest.fixture(scope="session")
def unseen_toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """20 toy videos of a seed the tiny model never trained on; the 10 in heldout.json are asked."""
    from panda_edge.toyworld.writer import generate

    directory = tmp_path_factory.mktemp("unseen-toy")
    generate(directory, videos=20, seed=3, heldout_fraction=0.5)
    return directory


def flip_bytes(path: Path, count: int = 64) -> None:
    """Damage a file as a bad disk or a partial overwrite would, keeping its size: `count` bytes in
    its middle inverted (for a llama.cpp state file, KV cache rows)."""
    data = bytearray(path.read_bytes())
    start = len(data) // 2
    data[start : start + count] = bytes(b ^ 0xFF for b in data[start : start + count])
    size = path.stat().st_size
    path.write_bytes(data)
    assert path.stat().st_size == size
