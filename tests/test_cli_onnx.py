"""`panda export`, `panda parity` and `panda bench vision` as a user runs them, in --json mode."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from tests.conftest import random_tiny_model
from typer.testing import CliRunner

from panda_edge.cli.main import app

runner = CliRunner()


@pytest.fixture(scope="module")
def exported(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    bundle = tmp_path_factory.mktemp("cli") / "bundle"
    args = ["export", "--target", "onnx", "--checkpoint", str(tiny_checkpoint), "--out", str(bundle)]
    result = runner.invoke(app, [*args, "--trt-profile", "8.5", "--json", "-"])
    assert result.exit_code == 0, result.output
    return bundle, json.loads(result.stdout)


def test_export_json_is_the_manifest(exported: tuple[Path, dict]) -> None:
    bundle, manifest = exported
    assert manifest == json.loads((bundle / "manifest.json").read_text())
    assert (
        manifest["vision"]["profile"] == "8.5" and "LayerNormalization" not in manifest["vision"]["operators"]
    )


def test_parity_on_default_clips_passes(exported: tuple[Path, dict], tiny_checkpoint: Path) -> None:
    bundle, _ = exported
    result = runner.invoke(
        app, ["parity", "--checkpoint", str(tiny_checkpoint), "--bundle", str(bundle), "--json", "-"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert list(report) == ["source", "reference", "stab_fp32"] and report["source"]["matches"] is True
    stab = report["stab_fp32"]
    assert set(stab) == {"cosine_min", "max_abs_rel", "passed", "videos"}
    assert stab["passed"] is True and stab["cosine_min"] >= 0.99999 and stab["max_abs_rel"] <= 1e-3
    assert stab["max_abs_rel"] <= 1e-5 and stab["cosine_min"] >= 1 - 1e-9  # measured 5.8e-7, 1 - 7e-13
    names = [Path(v["video"]).name for v in stab["videos"]]
    assert names == ["square.mp4", "landscape_16x9.mp4", "portrait_9x16.mp4", "five_frames.mp4"]


def test_parity_with_given_videos_writes_json(
    exported: tuple[Path, dict], tiny_checkpoint: Path, make_video, tmp_path: Path
) -> None:
    bundle, _ = exported
    a, b = make_video("a.mp4", width=160, height=90), make_video("b.mp4", n=5)
    out = tmp_path / "parity.json"
    args = ["parity", "--checkpoint", str(tiny_checkpoint), "--bundle", str(bundle), "--json", str(out)]
    result = runner.invoke(app, [*args, "--videos", str(a), str(b)])
    assert result.exit_code == 0, result.output
    videos = json.loads(out.read_text())["stab_fp32"]["videos"]
    assert [v["video"] for v in videos] == [str(a), str(b)]
    assert [v["tokens"] for v in videos] == [8 * 16, 5 * 21 + 3 * 21]


def test_parity_against_other_weights_fails_with_exit_1(
    exported: tuple[Path, dict], tokenizer_file: Path, tmp_path: Path, make_video
) -> None:
    bundle, _ = exported
    other = tmp_path / "other"
    random_tiny_model(tokenizer_file, seed=1).save_pretrained(other)
    video = make_video()
    args = ["parity", "--checkpoint", str(other), "--bundle", str(bundle), "--json", "-", str(video)]
    result = runner.invoke(app, args)
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["stab_fp32"]["passed"] is False
    assert "stab_fp32 parity failed" in result.stderr
    assert report["source"]["matches"] is False
    assert "holds other weights than the bundle was exported from" in " ".join(result.stderr.split())


def test_bad_input_exits_2(exported: tuple[Path, dict], tiny_checkpoint: Path, tmp_path: Path) -> None:
    bundle, _ = exported
    ckpt = str(tiny_checkpoint)
    not_video = tmp_path / "notes.mp4"
    not_video.write_text("not a video")
    cases = [
        (["parity", "--checkpoint", ckpt, "--bundle", str(tmp_path / "nope")], "no such bundle directory"),
        (["parity", "--checkpoint", ckpt, "--bundle", str(bundle), str(tmp_path / "x.mp4")], "no such video"),
        (["parity", "--checkpoint", ckpt, "--bundle", str(bundle), str(not_video)], "notes.mp4"),
        (["export", "--checkpoint", ckpt, "--out", str(tmp_path / "b"), "--trt-profile", "9"], "profile '9'"),
        (["export", "--checkpoint", ckpt, "--out", str(tmp_path / "b"), "--target", "tfl"], "unknown target"),
        (["export", "--checkpoint", str(tmp_path), "--out", str(tmp_path / "b")], "config.json"),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.output


def test_bench_vision_json_shape() -> None:
    result = runner.invoke(app, ["bench", "vision", "--preset", "tiny", "--repeat", "1", "--json", "-"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    engines = {"torch", "ort", "ort_int8", "ort_int8_tensorrt"}
    assert set(report["vision"]) == engines
    assert all(report["vision"][k]["median_ms"] > 0 for k in engines)
    assert report["ratio_ort_vs_torch"] > 0 and report["parity"]["passed"] is True
    assert report["ratio_ort_int8_vs_torch"] > 0 and report["gemm_ceiling"]["ratio_int8_vs_fp32"] > 0
    stab_int8 = report["int8"]["stab_int8"]
    assert stab_int8["cpu"]["cosine_mean"] >= 0.99 and stab_int8["tensorrt"]["cosine_mean"] >= 0.99
    assert report["machine"]["cores_available"] >= 1


def test_export_all_then_onnx_again_keeps_the_gguf(tiny_checkpoint: Path, tmp_path: Path) -> None:
    bundle = tmp_path / "bundle"
    args = ["export", "--checkpoint", str(tiny_checkpoint), "--out", str(bundle)]
    result = runner.invoke(app, [*args, "--target", "all", "--gguf-type", "f16", "--json", "-"])
    assert result.exit_code == 0, result.output
    assert {"stab.onnx", "llm.f16.gguf"} <= set(json.loads(result.stdout)["files"])
    again = runner.invoke(app, [*args, "--json", "-"])
    assert again.exit_code == 0, again.output
    manifest = json.loads(again.stdout)
    assert "llm.f16.gguf" in manifest["files"] and list(manifest["llm"]["gguf"]) == ["f16"]


def test_export_into_a_bundle_of_another_checkpoint_exits_2(
    tiny_checkpoint: Path, tokenizer_file: Path, tmp_path: Path
) -> None:
    other = tmp_path / "other"
    random_tiny_model(tokenizer_file, seed=1).save_pretrained(other)
    bundle = tmp_path / "bundle"
    first = runner.invoke(app, ["export", "--checkpoint", str(tiny_checkpoint), "--out", str(bundle)])
    assert first.exit_code == 0, first.output
    for target in ("onnx", "gguf"):
        args = ["export", "--target", target, "--checkpoint", str(other), "--out", str(bundle)]
        result = runner.invoke(app, [*args, "--gguf-type", "f32"])
        assert result.exit_code == 2 and "holds an export of another checkpoint" in result.output
    assert (bundle / "manifest.json").is_file()
