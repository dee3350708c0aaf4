"""The released layout at a scale where memory shows: sharded float16 safetensors, loaded within about
one copy of the weights, each parity level loading only what it needs, a memory shortage as exit 2.

The checkpoint is Video-Panda-7B's layout scaled down (a 6 x 1024 Llama with the 32,000-piece
vocabulary, 285 MB of float16 weights in 4 shards) so that the weights dominate the process.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from panda_edge.bench.release import write_release_checkpoint
from panda_edge.cli.main import app
from panda_edge.config import PRESETS, LlmConfig
from panda_edge.memory import BUDGET_ENV
from panda_edge.model.loading import ReferencePrecision, WidenedLinear
from panda_edge.model.videopanda import VideoPanda
from panda_edge.optional import has_llama_cpp

runner = CliRunner()
needs_llama = pytest.mark.skipif(not has_llama_cpp(), reason="needs llama-cpp-python (the 'llama' extra)")
SCALED = replace(
    PRESETS["tiny"],
    llm=LlmConfig(
        hidden_size=1024,
        intermediate_size=2816,
        num_hidden_layers=6,
        num_attention_heads=16,
        num_key_value_heads=16,
        vocab_size=32000,
        max_position_embeddings=2048,
    ),
    name="scaled",
)


@pytest.fixture(scope="module")
def released(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("released") / "ckpt"
    info = write_release_checkpoint(directory, SCALED, shards=4)
    assert info["shards"] == 4 and len(list(directory.glob("model-*-of-00004.safetensors"))) == 4
    assert json.loads((directory / "config.json").read_text())["torch_dtype"] == "float16"
    return directory


PEAK_SCRIPT = """
import json, sys
import torch, transformers.models.llama.modeling_llama  # imports first: their memory is not loading's
from panda_edge.model.videopanda import VideoPanda

def status(key):
    return next(int(l.split()[1]) * 1024 for l in open("/proc/self/status") if l.startswith(key))

open("/proc/self/clear_refs", "w").write("5")  # VmHWM := VmRSS
before = status("VmRSS:")
model = VideoPanda.from_pretrained(sys.argv[1])
kept = sum(t.numel() * t.element_size() for t in model.state_dict().values())
print(json.dumps({"before": before, "peak": status("VmHWM:"), "kept": kept}))
"""


def test_loading_peak_is_about_one_copy_of_the_weights(released: Path) -> None:
    """Built on meta, filled tensor by tensor: the peak stays under 1.3x the weights as kept (the old
    path, a float32 model plus the file's tensors, took about 3x)."""
    done = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(released)], capture_output=True, text=True, check=True
    )
    m = json.loads(done.stdout.strip().splitlines()[-1])
    assert m["kept"] > 250e6
    assert m["peak"] - m["before"] < 1.3 * m["kept"], m


def test_fp32_compute_keeps_16bit_weights_and_is_exact(released: Path) -> None:
    """The Llama's matrices stay float16 and are widened per layer: the logits equal those of a full
    float32 copy bit for bit (float16 widens to float32 exactly)."""
    model = VideoPanda.from_pretrained(released)
    layer = model.llm.model.layers[0].mlp.up_proj
    assert isinstance(layer, WidenedLinear) and layer.weight.dtype == torch.float16
    assert model.llm.model.norm.weight.dtype == torch.float32
    assert model.stab.patch_embedding.weight.dtype == torch.float32
    ids = torch.tensor([[1, 450, 2685, 338, 29871, 1207, 3400]])
    with torch.inference_mode():
        widened = model.llm(ids).logits
        model.llm.float()  # now a full float32 copy
        copied = model.llm(ids).logits
    assert torch.equal(widened, copied)


def test_16bit_compute_converts_the_weights(released: Path) -> None:
    model = VideoPanda.from_pretrained(released, ReferencePrecision("bf16"))
    assert model.llm.model.layers[0].mlp.up_proj.weight.dtype == torch.bfloat16
    assert model.stab.patch_embedding.weight.dtype == torch.bfloat16


@pytest.mark.parametrize(
    "args",
    [
        ["generate", "VIDEO", "What is moving?", "--checkpoint", "CKPT"],
        ["eval", "--qa", "QA", "--videos", "VIDEOS", "--checkpoint", "CKPT"],
    ],
)
def test_not_enough_memory_is_exit_2_with_what_helps(
    released: Path, make_video, tmp_path: Path, args: list[str]
) -> None:
    video = make_video()
    qa = tmp_path / "qa.json"
    qa.write_text(json.dumps([{"video": video.name, "question": "What?", "answer": "a"}]))
    values = {"VIDEO": str(video), "CKPT": str(released), "QA": str(qa), "VIDEOS": str(video.parent)}
    result = runner.invoke(app, [values.get(a, a) for a in args], env={BUDGET_ENV: "0.2"})
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in result.output
    assert "needs about" in lines[0] and "0.2 GB is available" in lines[0] and "--dtype" in lines[0]


def test_unknown_dtype_or_device_is_exit_2(released: Path, make_video) -> None:
    video = str(make_video())
    for option in (["--dtype", "fp8"], ["--device", "tpu"]):
        result = runner.invoke(app, ["generate", video, "q", "--checkpoint", str(released), *option])
        assert result.exit_code == 2 and "choose one of" in result.stderr


@pytest.fixture(scope="module")
def bundle(released: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from panda_edge.export.llm_gguf.export_gguf import export_gguf
    from panda_edge.export.stab_onnx.export_onnx import export_bundle

    directory = tmp_path_factory.mktemp("released-bundle") / "bundle"
    export_bundle(released, directory)
    if has_llama_cpp():
        for t in ("f16", "q8_0"):
            export_gguf(released, directory, t)
    return directory


@needs_llama
def test_each_parity_level_loads_only_what_it_needs(released: Path, bundle: Path, make_video) -> None:
    """With almost no memory allowed, the tokenizer level still runs (it loads no weights) while the llm
    level refuses before loading; the stab level loads the vision part alone, within a budget the
    whole model would not fit."""
    base = ["parity", "--checkpoint", str(released), "--bundle", str(bundle), "--json", "-"]
    tokenizer = runner.invoke(app, [*base, "--levels", "tokenizer"], env={BUDGET_ENV: "0.01"})
    assert tokenizer.exit_code == 0, tokenizer.output
    assert json.loads(tokenizer.stdout)["tokenizer"]["identical"] is True
    llm = runner.invoke(app, [*base, "--levels", "llm"], env={BUDGET_ENV: "0.01"})
    assert llm.exit_code == 2 and "the LLM reference in fp32 needs about" in llm.stderr
    stab = runner.invoke(app, [*base, "--levels", "stab_fp32"], env={BUDGET_ENV: "0.7"})
    assert stab.exit_code == 0, stab.output
    generate = ["generate", str(make_video()), "q", "--checkpoint", str(released)]
    whole = runner.invoke(app, generate, env={BUDGET_ENV: "0.7"})
    assert whole.exit_code == 2 and "the PyTorch reference in fp32 needs about" in whole.stderr


@needs_llama
def test_journey_on_the_released_layout(released: Path, bundle: Path, make_video, tmp_path: Path) -> None:
    """llm and e2e with the f16 GGUF standing in for f32 (weights stored in float16), the report naming
    the reference's dtype and device."""
    video = make_video(width=128, height=72)
    qa = tmp_path / "qa.json"
    qa.write_text(json.dumps([{"video": video.name, "question": "What is moving?", "answer": "a"}]))
    result = runner.invoke(
        app,
        ["parity", "--checkpoint", str(released), "--bundle", str(bundle), str(video), "--qa", str(qa),
         "--video-dir", str(video.parent), "--levels", "stab_fp32,tokenizer,llm,e2e", "--e2e-videos", "1",
         "--json", "-"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["reference"] == {"dtype": "fp32", "device": "cpu", "weights_stored": "float16"}
    f16 = report["llm"]["f16"]
    assert f16["passed"] is True and f16["required_max_rel"] == 0.01 and f16["top1_agreement"] >= 0.99
    assert f16["max_abs_diff"] <= 0.01 * f16["reference_max_abs"]
    assert report["e2e"]["gguf"] == "f16" and report["e2e"]["identical_answers"] == 1
    assert report["stab_fp32"]["passed"] is True


@needs_llama
def test_the_f16_standin_catches_a_wrong_export(released: Path, tmp_path: Path) -> None:
    """Judged by the size of its error, the f16 stand-in still fails an export without the q/k
    permutation llama.cpp's RoPE needs."""
    from panda_edge.export.llm_gguf.export_gguf import export_gguf
    from panda_edge.parity.llm import llm_parity, parity_sequences
    from panda_edge.parity.llm_reference import reference_logits
    from panda_edge.prompt import PromptTokenizer

    export_gguf(released, tmp_path, "f16", permute=False)
    sequences = parity_sequences(PromptTokenizer(released / "tokenizer.model"))[:3]
    wrong = llm_parity(
        reference_logits(released, sequences), {"f16": tmp_path / "llm.f16.gguf"}, sequences, f16_standin=True
    )["f16"]
    assert not wrong.passed and wrong.max_abs_diff > 0.01 * wrong.reference_max_abs


def test_e2e_standin_accepts_a_difference_only_at_a_near_tie(tmp_path: Path) -> None:
    """The comparison itself: identical tokens pass; a first difference passes for the f16 stand-in
    only where the reference's top-2 margin is within twice the allowed error, never otherwise."""
    from panda_edge.parity.e2e import ReferenceAnswer, e2e_parity
    from panda_edge.parity.task import Question

    questions = [Question(str(i), f"v{i}.mp4", "q", "a", "") for i in range(3)]
    reference = [
        ReferenceAnswer([5, 6, 7], [(3.0, 10.0), (0.1, 10.0), (2.0, 10.0)]),  # step 1: a near tie at 1%
        ReferenceAnswer([5, 6, 7], [(3.0, 10.0), (1.0, 10.0), (2.0, 10.0)]),  # step 1: decisive
        ReferenceAnswer([5, 6], [(3.0, 10.0), (3.0, 10.0)]),
    ]
    answers = {"v0.mp4": [5, 9, 9], "v1.mp4": [5, 9, 9], "v2.mp4": [5, 6]}
    runtime = lambda video, question: answers[Path(video).name]  # noqa: E731
    exact = e2e_parity(reference, runtime, questions, tmp_path)
    assert exact.identical_answers == 1 and exact.near_tie_divergences == 0 and not exact.passed
    standin = e2e_parity(reference, runtime, questions, tmp_path, tie_max_rel=0.01)
    assert standin.near_tie_divergences == 1 and not standin.passed
    assert [m["first_difference"] for m in standin.mismatches] == [1, 1]
    assert [m["near_tie"] for m in standin.mismatches] == [True, False]
    assert e2e_parity(reference[::2], runtime, questions[::2], tmp_path, tie_max_rel=0.01).passed
