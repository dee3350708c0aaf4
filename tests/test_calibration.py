"""INT8 calibration on the embedded tiny model: both Q/DQ forms per TensorRT profile, run by ONNX Runtime
on real toy-world videos and judged against docs/design.md §5 (stab_int8: mean per-token cosine >= 0.99)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

from panda_edge.backends import TRT_TARGETS as PROFILES
from panda_edge.bundle import load_manifest, sha256_file
from panda_edge.calibration.data import load_calibration, videos_of_qa
from panda_edge.calibration.qdq import CPU, TENSORRT, QdqWriter
from panda_edge.calibration.ranges import collect_ranges
from panda_edge.calibration.search import TokenScorer
from panda_edge.cli.main import app
from panda_edge.config import PRESETS
from panda_edge.errors import BundleError
from panda_edge.export.stab_onnx.check import check_onnx, qdq_problems
from panda_edge.export.stab_onnx.export_onnx import export_bundle
from panda_edge.runtime.vision import OrtVisionEngine
from panda_edge.video import load_videos

runner = CliRunner()
TINY = PRESETS["tiny"].vision
INT8_KEYS = {
    "file",
    "cpu_file",
    "profile",
    "opset",
    "method",
    "samples",
    "calibration",
    "float_groups",
    "target_cosine",
    "cosine_mean",
    "cosine_min",
    "cpu_cosine_mean",
    "cpu_cosine_min",
    "groups",
    "heldout",
}


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from panda_edge.toyworld.writer import generate

    out = tmp_path_factory.mktemp("toy")
    generate(out, videos=12, seed=5, heldout_fraction=0.25)
    return out


@pytest.fixture(scope="module")
def calibration_frames(toy: Path) -> np.ndarray:
    return load_videos(videos_of_qa(toy / "train.json")[:3], TINY)


@pytest.fixture(scope="module", params=list(PROFILES))
def forms(request, calibration_frames: np.ndarray, tmp_path_factory: pytest.TempPathFactory):
    """The tiny model's fp32 graph for one profile and both INT8 forms, every group quantized."""
    bundle = tmp_path_factory.mktemp(f"int8-{request.param}")
    export_bundle("tiny", bundle, request.param)
    source = bundle / "stab.onnx"
    writer = QdqWriter(onnx.load(str(source)), collect_ranges(source, calibration_frames))
    paths = {}
    for form in (TENSORRT, CPU):
        paths[form.name] = bundle / f"{form.name}.onnx"
        onnx.save(writer.write(list(writer.nodes), form), str(paths[form.name]))
    return request.param, source, paths


def _initializers(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    return {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}


def test_tensorrt_form_passes_its_profile_and_the_qdq_rules(forms) -> None:
    profile, _, paths = forms
    assert check_onnx(paths["tensorrt"], profile) == []
    model = onnx.load(str(paths["tensorrt"]))
    assert max(o.version for o in model.opset_import) <= PROFILES[profile].max_opset
    values = _initializers(model)
    producer = {o: n for n in model.graph.node for o in n.output}
    qdq = [n for n in model.graph.node if n.op_type in ("QuantizeLinear", "DequantizeLinear")]
    assert qdq and all(values[n.input[2]].dtype == np.int8 and not values[n.input[2]].any() for n in qdq)
    dequantized = {n.output[0] for n in qdq if n.op_type == "DequantizeLinear"}
    quantized = [
        n
        for n in model.graph.node
        if n.op_type != "DequantizeLinear" and n.input[1:2] and n.input[1] in dequantized
    ]
    # every Conv / MatMul / Gemm with a weight; the attention-score MatMuls (two activations) stay float
    assert {n.op_type for n in quantized} == {"Conv", "MatMul", "Gemm"} and len(quantized) == 20
    for node in quantized:
        weight_dq = producer[node.input[1]]
        assert values[weight_dq.input[0]].dtype == np.int8 and values[weight_dq.input[1]].ndim == 1
        if len(node.input) > 2:  # the bias stays a float initializer
            assert node.input[2] in values and values[node.input[2]].dtype == np.float32
    # Q/DQ sit on the inputs of quantized nodes only: adds, LayerNorms, softmax never see int8 values
    quantized_names = {n.name for n in quantized}
    for dq in (n for n in qdq if n.op_type == "DequantizeLinear"):
        users = [n for n in model.graph.node if dq.output[0] in n.input]
        assert users and all(n.name in quantized_names for n in users), dq.name


def test_cpu_form_is_u8s8_and_only_the_tensorrt_checks_refuse_it(forms) -> None:
    profile, _, paths = forms
    model = onnx.load(str(paths["cpu"]))
    assert qdq_problems(model, tensorrt=False) == []
    assert any("int8 activations with zero point 0" in p for p in check_onnx(paths["cpu"], profile))
    values = _initializers(model)
    zero_points = {values[n.input[2]].dtype for n in model.graph.node if n.op_type == "QuantizeLinear"}
    assert zero_points == {np.dtype(np.uint8)}
    weights = [
        values[n.input[0]]
        for n in model.graph.node
        if n.op_type == "DequantizeLinear" and n.input[0] in values
    ]
    assert weights and max(int(np.abs(w).max()) for w in weights) <= 63  # 7-bit: no u8 x s8 saturation


def test_both_forms_keep_the_visual_tokens(forms, toy: Path) -> None:
    """Held-out videos, every group in INT8: both forms reach the stab_int8 threshold against fp32."""
    _, source, paths = forms
    heldout = load_videos(videos_of_qa(toy / "heldout.json")[:2], TINY)
    scorer = TokenScorer(source, heldout, 0.99)
    tensorrt = scorer.score(onnx.load(str(paths["tensorrt"])), qdq_in_float=True)
    cpu = scorer.score(onnx.load(str(paths["cpu"])))
    assert tensorrt.cosine_mean >= 0.99 and cpu.cosine_mean >= 0.99, (str(tensorrt), str(cpu))
    assert sum(tensorrt.cosine_counts) == tensorrt.tokens > 0


@pytest.fixture(scope="module")
def int8_bundle(toy: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    bundle = tmp_path_factory.mktemp("cli-int8") / "bundle"
    args = ["export", "--target", "onnx", "--precision", "int8", "--checkpoint", "tiny", "--out", str(bundle)]
    args += ["--qa", str(toy / "train.json"), "--samples", "4", "--holdout", "2", "--trt-profile", "8.5"]
    result = runner.invoke(app, [*args, "--json", "-"])
    assert result.exit_code == 0, result.output
    return bundle, json.loads(result.stdout)


def test_the_int8_report_reads_what_the_calibration_wrote(int8_bundle: tuple[Path, dict]) -> None:
    """`panda calibrate`'s printed report comes from the typed section, field for field."""
    from panda_edge.bundle import Manifest
    from panda_edge.cli.calibrate import print_report

    bundle, manifest = int8_bundle
    entry, report = manifest["vision_int8"], Manifest.load(bundle).int8_report()
    assert (report.file, report.cpu_file, report.calibration) == (
        entry["file"],
        entry["cpu_file"],
        entry["calibration"],
    )
    assert (report.samples, report.heldout_videos, report.method) == (4, 2, entry["method"])
    assert (report.tensorrt.cosine_mean, report.cpu.cosine_min) == (
        entry["cosine_mean"],
        entry["cpu_cosine_min"],
    )
    assert (
        report.heldout is not None
        and report.heldout[0].cosine_mean == entry["heldout"]["tensorrt"]["cosine_mean"]
    )
    assert {n: g.precision for n, g in report.groups.items()} == {
        n: g["precision"] for n, g in entry["groups"].items()
    }
    assert report.float_groups == entry["float_groups"] and report.quantized_nodes == entry["quantized_nodes"]
    print_report(bundle, report)  # renders without a key lookup of its own


def test_export_int8_writes_both_graphs_and_the_data(int8_bundle: tuple[Path, dict]) -> None:
    bundle, manifest = int8_bundle
    assert manifest == load_manifest(bundle)
    entry = manifest["vision_int8"]
    assert set(entry) >= INT8_KEYS
    assert {entry["file"], entry["cpu_file"], entry["calibration"]} <= set(manifest["files"])
    assert (entry["file"], entry["cpu_file"], entry["profile"], entry["opset"]) == (
        "stab.int8.onnx",
        "stab.int8.cpu.onnx",
        "8.5",
        17,
    )
    assert entry["cosine_mean"] >= 0.99 and entry["cpu_cosine_mean"] >= 0.99
    assert (
        entry["heldout"]["tensorrt"]["cosine_mean"] >= 0.99 and entry["heldout"]["cpu"]["cosine_mean"] >= 0.99
    )
    assert len(entry["groups"]) == 10 and all(g["reason"] for g in entry["groups"].values())
    frames, videos = load_calibration(bundle / "calibration.npz", TINY)
    assert frames.shape == (4, 8, 4, 112, 112) and len(videos) == 4 == entry["samples"]
    assert check_onnx(bundle / "stab.int8.onnx", "8.5") == []


def test_parity_reports_stab_int8(int8_bundle: tuple[Path, dict], toy: Path) -> None:
    bundle, _ = int8_bundle
    videos = [str(p) for p in videos_of_qa(toy / "heldout.json")[:2]]
    result = runner.invoke(
        app, ["parity", "--checkpoint", "tiny", "--bundle", str(bundle), "--json", "-", *videos]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert list(report) == ["source", "reference", "stab_fp32", "stab_int8"]
    int8 = report["stab_int8"]
    assert (
        int8["passed"] is True and int8["cosine_mean"] >= 0.99 and int8["cosine_min"] <= int8["cosine_mean"]
    )
    assert sum(int8["cosine_histogram"].values()) == int8["tokens"]
    assert int8["tensorrt_form"]["cosine_mean"] >= 0.99 and len(int8["videos"]) == 2


def test_calibration_npz_reproduces_the_graphs_and_target_sends_groups_to_float(
    int8_bundle: tuple[Path, dict], tmp_path: Path
) -> None:
    """Calibrating again from the bundle's tensors gives the same bytes; a stricter target puts the most
    harmful groups (lowest cosine alone) back to float, in that order, until both forms reach it."""
    source, _ = int8_bundle
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    for f in source.iterdir():
        (bundle / f.name).write_bytes(f.read_bytes())
    before = load_manifest(bundle)["vision_int8"]
    result = runner.invoke(app, ["calibrate", "--bundle", str(bundle), "--holdout", "0", "--json", "-"])
    assert result.exit_code == 0, result.output
    assert sha256_file(bundle / "stab.int8.onnx") == sha256_file(source / "stab.int8.onnx")
    assert json.loads(result.stdout)["videos"] == before["videos"]

    target = 0.99995
    args = ["calibrate", "--bundle", str(bundle), "--target-cosine", str(target), "--json", "-"]
    report = json.loads(runner.invoke(app, args).stdout)
    floated = report["float_groups"]
    alone = {name: g["alone_cosine_mean"] for name, g in report["groups"].items()}
    assert floated == sorted(alone, key=alone.get)[: len(floated)] and floated
    assert report["cosine_mean"] >= target and report["cpu_cosine_mean"] >= target
    assert all(report["groups"][g]["precision"] == "float" for g in floated)
    assert report["quantized_nodes"] < report["quantizable_nodes"]
    with OrtVisionEngine.from_bundle(bundle, precision="int8") as engine:
        assert engine.layout.tokens_shape == (8, 21, PRESETS["tiny"].llm.hidden_size)


def test_bad_input_exits_2_and_leaves_the_bundle(tmp_path: Path, toy: Path) -> None:
    bundle = tmp_path / "bundle"
    export_bundle("tiny", bundle, "11")
    manifest = (bundle / "manifest.json").read_bytes()
    cases = [
        (["calibrate", "--bundle", str(bundle)], "no calibration.npz to reuse"),
        (["calibrate", "--bundle", str(bundle), "--videos", str(tmp_path / "none")], "no such directory"),
        (["calibrate", "--bundle", str(bundle), "--qa", str(toy / "train.json"), "--method", "max"], "'max'"),
        (
            ["calibrate", "--bundle", str(bundle), "--videos", str(toy / "videos"), "--target-cosine", "2"],
            "(0, 1]",
        ),
        (["calibrate", "--bundle", str(tmp_path / "nope"), "--videos", str(toy)], "no such bundle"),
        (
            ["export", "--checkpoint", "tiny", "--out", str(tmp_path / "b"), "--precision", "int8"],
            "--videos DIR",
        ),
    ]
    for args, message in cases:
        result = runner.invoke(app, args)
        assert result.exit_code == 2, (args, result.output)
        assert message in result.stderr, (args, result.stderr)
        assert "Traceback" not in result.output
    assert (bundle / "manifest.json").read_bytes() == manifest
    assert sorted(p.name for p in bundle.iterdir()) == [
        ".verified.json",
        "manifest.json",
        "prompt.json",
        "stab.onnx",
        "tokenizer.model",
    ]
    with pytest.raises(BundleError, match="panda calibrate"):
        OrtVisionEngine.from_bundle(bundle, precision="int8")


def _gemm_model(bias_quantized: bool, zero_point: int, per_channel: bool) -> onnx.ModelProto:
    """x -> Q/DQ -> Gemm(W via DQ, bias) -> y, with one rule broken on demand."""
    w = numpy_helper.from_array(np.ones((4, 3), np.int8), "w")
    w_scale = numpy_helper.from_array(np.full(4 if per_channel else (), 0.1, np.float32), "ws")
    w_zero = numpy_helper.from_array(np.zeros(4 if per_channel else (), np.int8), "wz")
    a_scale = numpy_helper.from_array(np.array(0.1, np.float32), "as")
    a_zero = numpy_helper.from_array(np.array(zero_point, np.uint8 if zero_point else np.int8), "az")
    bias = numpy_helper.from_array(np.ones(4, np.int32 if bias_quantized else np.float32), "b")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "as", "az"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "as", "az"], ["xd"], name="dq"),
        helper.make_node("DequantizeLinear", ["w", "ws", "wz"], ["wd"], name="wdq", axis=0),
    ]
    bias_input = "b"
    if bias_quantized:
        nodes.append(helper.make_node("DequantizeLinear", ["b", "ws"], ["bd"], name="bdq", axis=0))
        bias_input = "bd"
    nodes.append(helper.make_node("Gemm", ["xd", "wd", bias_input], ["y"], name="gemm", transB=1))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [w, w_scale, w_zero, a_scale, a_zero, bias],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_qdq_rules_catch_what_tensorrt_refuses() -> None:
    assert qdq_problems(_gemm_model(False, 0, True)) == []
    assert any("zero point 0" in p for p in qdq_problems(_gemm_model(False, 7, True)))
    assert any("bias is quantized" in p for p in qdq_problems(_gemm_model(True, 0, True)))
    assert any("per output channel" in p for p in qdq_problems(_gemm_model(False, 0, False)))
