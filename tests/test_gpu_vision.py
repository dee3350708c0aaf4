"""The GPU runtime's CPU side: `--vision torch` at each dtype with `--device`, the parity path a GPU run
takes (PyTorch vision, the decoder's layers offloaded) run here on the CPU, and every GPU option
refused cleanly on a machine without one (benchmarks/gpu/ measures the GPU itself)."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from panda_edge.backends import BF16, FP16, FP32, TORCH
from panda_edge.cli.main import app
from panda_edge.errors import PandaError
from panda_edge.optional import has_llama_cpp
from panda_edge.runtime.options import RuntimeOptions

runner = CliRunner()
needs_llama = pytest.mark.skipif(not has_llama_cpp(), reason="llama-cpp-python is not installed")
no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the refusal on a machine without a GPU")
NO_GPU = "sees no CUDA GPU"


@pytest.fixture(scope="module")
def bundle(f32_bundle: Path) -> Path:
    return f32_bundle


def test_the_torch_backend_takes_each_dtype_and_a_device() -> None:
    """fp32, fp16 and bf16 are the torch backend's precisions; --device is for it alone."""
    for dtype in (FP32, FP16, BF16):
        options = RuntimeOptions(vision=TORCH, checkpoint="tiny", precision=dtype)
        assert options.vision_label == f"torch {dtype}"
    cuda = RuntimeOptions(vision=TORCH, checkpoint="tiny", precision=FP16, device="cuda")
    assert cuda.vision_label == "torch fp16 on cuda"
    with pytest.raises(PandaError, match="--device is where --vision torch runs"):
        RuntimeOptions(device="cuda")
    with pytest.raises(PandaError, match="unknown --device 'tpu'"):
        RuntimeOptions(vision=TORCH, checkpoint="tiny", device="tpu")
    with pytest.raises(PandaError, match="unknown vision precision 'int8' for --vision torch"):
        RuntimeOptions(vision=TORCH, checkpoint="tiny", precision="int8")


@no_gpu
@needs_llama
@pytest.mark.parametrize(
    "argv",
    [
        ["run", "{video}", "what?"],
        ["chat", "{video}"],
        ["serve", "--port", "0"],
        ["watch", "{video}"],
    ],
)
def test_device_cuda_without_a_gpu_is_exit_2_before_loading(
    argv: list[str], bundle: Path, make_video
) -> None:
    video = str(make_video("clip.mp4", 8, 64, 48))
    args = [a.format(video=video) for a in argv]
    gpu = ["--vision", "torch", "--checkpoint", "tiny", "--device", "cuda", "--precision", "fp16"]
    result = runner.invoke(app, [*args, "--bundle", str(bundle), *gpu])
    assert result.exit_code == 2, result.output
    assert NO_GPU in result.stderr and "Traceback" not in result.output


@no_gpu
def test_gpu_options_without_a_gpu_are_exit_2_in_eval_and_parity(bundle: Path, unseen_toy: Path) -> None:
    qa = ["--qa", str(unseen_toy / "heldout.json")]
    runtime = ["--bundle", str(bundle), "--vision", "torch", "--device", "cuda"]
    result = runner.invoke(app, ["eval", *qa, "--videos", str(unseen_toy / "videos"), *runtime])
    assert result.exit_code == 2 and NO_GPU in result.stderr, result.output
    result = runner.invoke(
        app, ["parity", "--checkpoint", "tiny", "--bundle", str(bundle), "--vision-device", "cuda", *qa]
    )
    assert result.exit_code == 2 and NO_GPU in result.stderr, result.output
    result = runner.invoke(
        app, ["parity", "--checkpoint", "tiny", "--bundle", str(bundle), "--vision-device", "gpu"]
    )
    assert result.exit_code == 2 and "unknown --vision-device 'gpu'" in result.stderr, result.output
    serve = ["serve", "--bundle", str(bundle), "--ray", "local", "--n-gpu-layers", "99"]
    result = runner.invoke(app, serve)  # refused before Ray starts
    assert result.exit_code == 2 and "need --gpus-per-replica" in result.stderr, result.output
    result = runner.invoke(app, ["run", "x.mp4", "what?", "--bundle", str(bundle), "--device", "cuda"])
    assert result.exit_code == 2 and "--vision torch --device cuda" in result.stderr, result.output


@needs_llama
def test_the_gpu_parity_path_runs_here_on_the_cpu(bundle: Path, unseen_toy: Path) -> None:
    """What `panda parity --vision-device cuda` runs, with PyTorch on the CPU: stab_fp16 (the torch
    backend at fp16 against the fp32 reference), e2e token for token with torch fp32 vision, and the
    task level at each torch dtype."""
    from panda_edge.bundle import Manifest
    from panda_edge.model.loading import ReferencePrecision
    from panda_edge.parity.report import (
        ParityContext,
        ParityOptions,
        no_progress,
        runtime_levels,
        stab_levels,
    )

    # --n-gpu-layers as the GPU run gives it: this CPU llama.cpp warns and keeps the layers
    torch_here = RuntimeOptions(vision=TORCH, checkpoint="tiny", threads=2, n_gpu_layers=99)
    ctx = ParityContext(
        "tiny", Manifest.load(bundle), ReferencePrecision(), no_progress, lambda m: None, False, torch_here
    )
    assert ctx.task_precisions == [FP32, FP16, BF16]
    stab = stab_levels(ctx, sorted((unseen_toy / "videos").glob("*.mp4"))[:2])
    assert {"stab_fp32", "stab_fp16"} <= set(stab)
    assert stab["stab_fp16"].passed and stab["stab_fp16"].overall.cosine_min >= 0.999

    options = ParityOptions(qa=unseen_toy / "heldout.json", e2e_videos=2, max_questions=4)
    levels = runtime_levels(ctx, options, {"e2e", "task"})
    assert set(levels) == {"e2e", "task", "task_fp16", "task_bf16"}
    e2e = levels["e2e"].to_dict()
    assert e2e["videos"] == 2 and e2e["identical_answers"] == 2
    assert levels["e2e"].config["vision"] == "torch fp32"
    for key, dtype in (("task", FP32), ("task_fp16", FP16), ("task_bf16", BF16)):
        task = levels[key]
        assert task.config["vision"] == f"torch {dtype}" and task.to_dict()["questions"] == 4
        assert task.passed, task
        assert f"torch {dtype} + q8_0 + 99 layers on the GPU" in str(task)  # the report line prints
    assert str(levels["e2e"]).endswith("PASS")


def test_parity_options_put_the_runtime_levels_on_the_gpu() -> None:
    from panda_edge.parity.report import ParityOptions

    gpu = ParityOptions(vision_device="cuda", n_gpu_layers=99).runtime("tiny")
    assert (gpu.vision, gpu.checkpoint, gpu.device, gpu.n_gpu_layers) == (TORCH, "tiny", "cuda", 99)
    assert ParityOptions().runtime("tiny") == RuntimeOptions()


@needs_llama
def test_gpu_layers_on_a_cpu_llama_cpp_warn_and_keep_the_memory_check(
    bundle: Path, make_video, caplog: pytest.LogCaptureFixture
) -> None:
    """llama.cpp without a GPU backend ignores --n-gpu-layers: the user is told, and the runtime still
    checks that the decoder fits in this machine's memory."""
    from panda_edge.runtime.llm.llamacpp import gpu_offload

    if gpu_offload():
        pytest.skip("this llama-cpp-python has a GPU backend")
    video = make_video("clip.mp4", 8, 64, 48)
    with caplog.at_level(logging.WARNING), RuntimeOptions(n_gpu_layers=99, threads=2).open(bundle) as opened:
        assert opened.decoder_on_cpu
        answer = opened.answer(video, "What is moving?", 4)
    assert answer.tokens and "no GPU backend" in caplog.text and "GGML_CUDA=on" in caplog.text


@needs_llama
def test_run_with_torch_vision_at_bf16_answers_and_says_so(bundle: Path, make_video) -> None:
    """`panda run --vision torch --precision bf16` on the CPU: the dtype path a GPU run takes."""
    video = make_video("clip.mp4", 8, 64, 48)
    argv = ["run", str(video), "What is moving?", "--bundle", str(bundle), "--max-new-tokens", "4"]
    argv += ["--vision", "torch", "--checkpoint", "tiny", "--precision", "bf16", "--device", "cpu"]
    result = runner.invoke(app, [*argv, "--json", "-"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["vision"].startswith("torch bf16 (") and report["tokens"] >= 1
