"""The embedded default model and `panda demo`, as a new user runs them."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from typer.testing import CliRunner

from panda_edge.assets import TINY_DIR
from panda_edge.cli.main import app
from panda_edge.lazy import has_llama_cpp
from panda_edge.model.loading import WidenedEmbedding, WidenedLinear
from panda_edge.model.videopanda import VideoPanda


def test_embedded_model_is_small_and_computes_in_float32() -> None:
    """Its weights are stored in float16: the Llama's matrices stay so and are widened as each layer
    runs; everything else is float32, and so are the logits."""
    size = sum(p.stat().st_size for p in TINY_DIR.iterdir())
    assert size < 10 * 2**20
    model = VideoPanda.from_pretrained("tiny")
    assert model.config.name == "tiny" and model.precision.dtype == "fp32"
    for module in model.modules():
        for p in module.parameters(recurse=False):
            widened = isinstance(module, (WidenedLinear, WidenedEmbedding))
            assert p.dtype == (torch.float16 if widened else torch.float32), module
    ids = torch.tensor([[1, 5, 9]])
    assert model.llm(ids).logits.dtype == torch.float32


def test_demo_answers_and_checks_parity(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["demo", "--workdir", str(tmp_path), "--questions", "6", "--json", "-"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["reference"]["questions"] == 6
    assert 0.0 <= report["reference"]["accuracy"] <= 1.0
    assert all(isinstance(s["prediction"], str) for s in report["samples"])
    stab = report["parity"]["stab_fp32"]
    assert stab["passed"] and stab["cosine_min"] >= 0.99999 and len(stab["videos"]) >= 2
    assert (tmp_path / "bundle" / "stab.onnx").is_file()
    if has_llama_cpp():
        assert report["parity"]["e2e"]["passed"] and report["parity"]["e2e"]["videos"] >= 6
        task = report["parity"]["task"]
        assert task["questions"] == 6 and task["gguf"] == "q8_0" and task["passed"]
        assert task["gguf_agreement"]["questions"] == 6
        assert report["runtime"]["ort fp32 + q8_0"]["accuracy"] == task["runtime_accuracy"]
    else:
        assert "llama-cpp-python is not installed" in report["skipped"][0]
