"""TensorRT engines: the version logic, recipes, trtexec commands and logs, build_engine.sh, the fp16
graph, `panda export --target trt` and `panda build-engine` here (no TensorRT), and, where TensorRT
and a GPU are present, the engine itself against ONNX Runtime."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper
from typer.testing import CliRunner

import panda_edge
from panda_edge.backends import TRT_TARGETS
from panda_edge.bundle import Engine, Manifest
from panda_edge.cli.main import app
from panda_edge.errors import BundleError, PandaError
from panda_edge.export.stab_onnx.fp16 import to_fp16
from panda_edge.export.trt.script import build_script
from panda_edge.trt.build_recipe import engine_file_name, recipe_for, trtexec_command
from panda_edge.trt.record import (
    EngineMismatch,
    GpuInfo,
    engine_problems,
    log_problems,
    parse_trtexec_log,
    select_engine,
)
from panda_edge.trt.versions import TrtUnsupported, TrtVersion, family_for

runner = CliRunner()
SRC = str(Path(panda_edge.__file__).parents[1])
ORIN = GpuInfo("Orin", "8.7")


# --- versions and recipes ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("8.5.2.2", TrtVersion(8, 5, 2, 2)),
        ("10.3.0", TrtVersion(10, 3, 0)),
        ("11.1", TrtVersion(11, 1, 0)),
        ("10.3.0.30-1+cuda12.5", TrtVersion(10, 3, 0, 30)),
        ("8502", TrtVersion(8, 5, 2)),  # trtexec's [TensorRT v8502]
        ("v100300", TrtVersion(10, 3, 0)),
        ("110402", TrtVersion(11, 4, 2)),
    ],
)
def test_version_parsing(text: str, expected: TrtVersion) -> None:
    assert TrtVersion.parse(text) == expected


@pytest.mark.parametrize(
    ("version", "family"),
    [("8.5.2", "8"), ("8.6.1.6", "8"), ("10.3.0", "10"), ("10.13.1", "10"), ("11.0.0", "11")],
)
def test_family_follows_the_major_release(version: str, family: str) -> None:
    assert family_for(version).major == family


@pytest.mark.parametrize("version", ["8.4.3", "9.2.0", "12.0.0", "7.1.3"])
def test_unsupported_releases_are_refused(version: str) -> None:
    with pytest.raises(TrtUnsupported, match=r"8\.5/8\.6 .*10\.x .*11\.x"):
        family_for(version)


def _manifest(profile: str, int8: bool = False, fp16: bool = True) -> Manifest:
    """A manifest of the graphs a bundle for `profile` holds (the files themselves are not needed)."""
    io = {
        "inputs": {"frames": {"shape": [8, 4, 112, 112]}},
        "outputs": {"visual_tokens": {"shape": [8, 21, 256]}},
    }
    manifest = {"vision": {"file": "stab.onnx", "profile": profile, "tensorrt": profile, **io}}
    if fp16:
        manifest["vision_fp16"] = {"file": "stab.fp16.onnx", "profile": profile}
    if int8:
        manifest["vision_int8"] = {
            "file": "stab.int8.onnx",
            "cpu_file": "stab.int8.cpu.onnx",
            "profile": profile,
        }
    names = [g["file"] for g in manifest.values()] + [manifest.get("vision_int8", {}).get("cpu_file")]
    files = {n: {"sha256": "0" * 64, "size": 1} for n in names if n}
    return Manifest.from_dict({**manifest, "files": files}, "B")


@pytest.mark.parametrize(
    ("family", "precision", "onnx_file", "network", "builder", "trtexec"),
    [
        # 8.5/8.6: weakly typed; the fp32 graph with FP16, the Q/DQ graph with INT8 (+ FP16 for the rest)
        ("8", "fp16", "stab.onnx", ["EXPLICIT_BATCH"], ["FP16"], ["--fp16"]),
        ("8", "int8", "stab.int8.onnx", ["EXPLICIT_BATCH"], ["INT8", "FP16"], ["--int8", "--fp16"]),
        ("8", "fp32", "stab.onnx", ["EXPLICIT_BATCH"], [], []),
        # 10.x: strongly typed, precision from the graph
        ("10", "fp16", "stab.fp16.onnx", ["STRONGLY_TYPED"], [], ["--stronglyTyped"]),
        ("10", "int8", "stab.int8.onnx", ["STRONGLY_TYPED"], [], ["--stronglyTyped"]),
        # 11.x: always strongly typed, no precision flags at all
        ("11", "fp16", "stab.fp16.onnx", [], [], []),
        ("11", "int8", "stab.int8.onnx", [], [], []),
    ],
)
def test_recipe_per_family_and_precision(family, precision, onnx_file, network, builder, trtexec) -> None:
    fam = next(t for t in TRT_TARGETS.values() if t.major == family)
    recipe = recipe_for(_manifest(fam.profile, int8=True), fam, precision)
    assert recipe.onnx_file == onnx_file
    assert list(recipe.network_flags) == network
    assert list(recipe.builder_flags) == builder
    assert list(recipe.trtexec_flags) == trtexec


def test_missing_graphs_say_what_to_run() -> None:
    with pytest.raises(
        BundleError, match=r"no INT8 graph .*panda calibrate.*--precision int8 --trt-profile 10"
    ):
        recipe_for(_manifest("10"), TRT_TARGETS["10"], "int8", bundle="B")
    with pytest.raises(BundleError, match=r"no fp16 graph, which strongly typed TensorRT 11.x needs"):
        recipe_for(_manifest("11", fp16=False), TRT_TARGETS["11"], "fp16", bundle="B")
    with pytest.raises(BundleError, match=r"profile 11; TensorRT 10.x \(JetPack 6.1 .*--trt-profile 10"):
        recipe_for(_manifest("11"), TRT_TARGETS["10"], "fp16", bundle="B")
    with pytest.raises(PandaError, match="unknown vision precision 'int4' for TensorRT"):
        recipe_for(_manifest("11"), TRT_TARGETS["11"], "int4")


def test_trtexec_commands_per_family() -> None:
    m8, m10, m11 = _manifest("8.5", int8=True), _manifest("10"), _manifest("11")
    assert trtexec_command(recipe_for(m8, TRT_TARGETS["8.5"], "int8"), "e.engine", 512) == [
        "trtexec",
        "--onnx=stab.int8.onnx",
        "--saveEngine=e.engine",
        "--memPoolSize=workspace:512",
        "--timingCacheFile=timing.cache",
        "--int8",
        "--fp16",
    ]
    assert trtexec_command(recipe_for(m10, TRT_TARGETS["10"], "fp16"), "e.engine", timing_cache=None) == [
        "trtexec",
        "--onnx=stab.fp16.onnx",
        "--saveEngine=e.engine",
        "--memPoolSize=workspace:1024",
        "--stronglyTyped",
    ]
    assert (
        trtexec_command(recipe_for(m11, TRT_TARGETS["11"], "fp16"), "e.engine")[-1]
        == "--timingCacheFile=timing.cache"
    )


def test_engine_names_carry_the_gpu_and_precision() -> None:
    assert engine_file_name("NVIDIA GeForce RTX 4090", "fp16") == "stab.geforce-rtx-4090.fp16.engine"
    assert engine_file_name("Orin", "int8") == "stab.orin.int8.engine"
    assert engine_file_name("Orin (nvgpu)", "fp32") == "stab.orin-nvgpu.fp32.engine"


# --- engine records ---------------------------------------------------------------------------------


def _record(
    tensorrt: str = "10.3.0.30", gpu: GpuInfo = ORIN, precision: str = "fp16", name: str = "x"
) -> dict:
    return {
        "file": f"stab.{name}.{precision}.engine",
        "precision": precision,
        "tensorrt": tensorrt,
        "gpu": gpu.to_dict(),
    }


def _engines(*records: dict) -> Manifest:
    files = {r["file"]: {"sha256": "0" * 64, "size": 1} for r in records}
    return Manifest.from_dict({"engines": {r["file"]: r for r in records}, "files": files}, "BUNDLE")


def _engine(*args: object, **kwargs: object) -> Engine:
    (engine,) = _engines(_record(*args, **kwargs)).engines.values()
    return engine


def test_engine_compatibility() -> None:
    ten = TrtVersion.parse("10.3.0.30")
    assert engine_problems(_engine(), ten, ORIN) == []
    assert engine_problems(_engine("10.3.0"), ten, ORIN) == []  # a trtexec record knows major.minor.patch
    (problem,) = engine_problems(_engine("10.3.0.26"), ten, ORIN)
    assert "built with TensorRT 10.3.0.26, this machine has TensorRT 10.3.0.30" in problem
    (problem,) = engine_problems(_engine(), ten, GpuInfo("NVIDIA GeForce RTX 4090", "8.9"))
    assert "built for Orin (compute capability 8.7), this GPU is NVIDIA GeForce RTX 4090" in problem
    (problem,) = engine_problems(
        _engine(gpu=GpuInfo("NVIDIA A10", "8.6")), ten, GpuInfo("NVIDIA RTX A6000", "8.6")
    )
    assert "built on a NVIDIA A10, this GPU is a NVIDIA RTX A6000" in problem
    assert len(engine_problems(_engine("8.5.2.2"), ten, GpuInfo("NVIDIA L4", "8.9"))) == 2


def test_select_engine_picks_the_one_for_this_device_or_says_rebuild() -> None:
    rtx = GpuInfo("NVIDIA GeForce RTX 4090", "8.9")
    manifest = _engines(_record(gpu=rtx, name="a"), _record(name="b"), _record(precision="int8", name="c"))
    ten = TrtVersion.parse("10.3.0.30")
    assert select_engine(manifest, "fp16", ten, ORIN).file == "stab.b.fp16.engine"
    assert select_engine(manifest, "int8", ten, ORIN).file == "stab.c.int8.engine"
    with pytest.raises(
        EngineMismatch, match=r"rebuild it on this device: panda build-engine --bundle B --precision"
    ):
        select_engine(manifest, "fp16", TrtVersion.parse("10.4.0"), ORIN, bundle="B")
    with pytest.raises(
        BundleError,
        match=r"no fp32 TensorRT engine \(it has .*stab.c.int8.engine \(int8, TensorRT 10.3.0.30, Orin\)\); "
        r"build one on this device: panda build-engine --bundle BUNDLE --precision fp32",
    ):
        select_engine(manifest, "fp32", ten, ORIN)


# --- trtexec logs and build_engine.sh ---------------------------------------------------------------

# The lines trtexec writes about itself (samples/trtexec/trtexec.cpp, samples/common/sampleDevice.cpp
# and logging.h in NVIDIA/TensorRT): the test banner with NV_TENSORRT_VERSION, the device block, the
# version line, the timing summary, the final status.
FAKE_TRTEXEC = r"""#!/usr/bin/env bash
code="${FAKE_TRT_CODE:-100300}"
echo "&&&& RUNNING TensorRT.trtexec [TensorRT v$code] # $0 $*"
if [ "${1:-}" = "--help" ]; then echo "=== Model Options ==="; exit 0; fi
t="[11/21/2026-10:00:00]"
echo "$t [I] === Device Information ==="
echo "$t [I] Available Devices: "
echo "$t [I]   Device 0: \"Orin\" UUID: GPU-00000000-0000-0000-0000-000000000000"
echo "$t [I] Selected Device: Orin"
echo "$t [I] Selected Device ID: 0"
echo "$t [I] Compute Capability: 8.7"
echo "$t [I] SMs: 8"
echo "$t [I] "
echo "$t [I] TensorRT version: ${FAKE_TRT_VERSION:-10.3.0}"
for arg in "$@"; do
  case "$arg" in --saveEngine=*) printf 'serialized engine' > "${arg#--saveEngine=}" ;; esac
done
echo "$t [I] GPU Compute Time: min = 9.8 ms, max = 11.2 ms, mean = 10.1 ms, median = 10.05 ms," \
  "percentile(90%) = 10.6 ms"
echo "&&&& PASSED TensorRT.trtexec [TensorRT v$code] # $0 $*"
"""


@pytest.fixture(scope="module")
def jetpack6_bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`panda export --target trt --trt-profile 10` of the embedded tiny model (a JetPack 6 user's)."""
    bundle = tmp_path_factory.mktemp("trt") / "bundle"
    args = ["export", "--target", "trt", "--checkpoint", "tiny", "--out", str(bundle), "--trt-profile", "10"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return bundle


@pytest.fixture
def tools(tmp_path: Path) -> dict[str, str]:
    """A stand-in trtexec (TensorRT cannot be installed here) and the `panda` of this checkout."""
    trtexec, panda = tmp_path / "trtexec", tmp_path / "panda"
    trtexec.write_text(FAKE_TRTEXEC)
    panda.write_text(
        f'#!/usr/bin/env bash\nPYTHONPATH={SRC} exec {sys.executable} -m panda_edge.cli.main "$@"\n'
    )
    for tool in (trtexec, panda):
        tool.chmod(0o755)
    return {"TRTEXEC": str(trtexec), "PANDA": str(panda)}


def _copy_bundle(bundle: Path, target: Path) -> Path:
    import shutil

    return Path(shutil.copytree(bundle, target))


def test_log_parsing_and_checks(jetpack6_bundle: Path, tools: dict[str, str], tmp_path: Path) -> None:
    run = subprocess.run(
        [
            tools["TRTEXEC"],
            "--onnx=stab.fp16.onnx",
            "--saveEngine=stab.trtexec.fp16.engine",
            "--stronglyTyped",
        ],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        check=True,
    )
    log = parse_trtexec_log(run.stdout)
    assert (log.version, log.gpu, log.status) == (TrtVersion(10, 3, 0), ORIN, "PASSED")
    assert log.gpu_compute_median_ms == 10.05 and log.option("--onnx") == "stab.fp16.onnx"
    recipe = recipe_for(Manifest.load(jetpack6_bundle), TRT_TARGETS["10"], "fp16")
    assert log_problems(log, recipe, "stab.trtexec.fp16.engine") == []
    wrong = parse_trtexec_log(run.stdout.replace("--stronglyTyped", "--fp16").replace("PASSED", "FAILED"))
    problems = " | ".join(log_problems(wrong, recipe, "other.engine"))
    assert "did not finish (status FAILED)" in problems
    assert "saved stab.trtexec.fp16.engine, not other.engine" in problems
    assert "ran with --fp16; fp16 with TensorRT 10.x needs --stronglyTyped" in problems


def test_build_script_builds_and_records_the_engine(jetpack6_bundle: Path, tools, tmp_path: Path) -> None:
    bundle = _copy_bundle(jetpack6_bundle, tmp_path / "on-device")
    script = bundle / "build_engine.sh"
    assert os.access(script, os.X_OK)
    subprocess.run(["bash", "-n", str(script)], check=True)
    result = subprocess.run(
        [str(script)], capture_output=True, text=True, env={**os.environ, **tools}, timeout=120
    )
    assert result.returncode == 0, result.stderr
    assert "--onnx=stab.fp16.onnx" in result.stdout and "--stronglyTyped" in result.stdout
    manifest = json.loads((bundle / "manifest.json").read_text())
    record = manifest["engines"]["stab.orin.fp16.engine"]
    assert (
        record["tensorrt"] == "10.3.0" and record["gpu"] == ORIN.to_dict() and record["builder"] == "trtexec"
    )
    assert record["source"] == {
        "file": "stab.fp16.onnx",
        "graph": "vision_fp16",
        "sha256": manifest["files"]["stab.fp16.onnx"]["sha256"],
    }
    assert record["inputs"]["frames"]["shape"] == [8, 4, 112, 112] and record["workspace_mb"] == 1024
    assert record["trtexec_gpu_compute_median_ms"] == 10.05
    assert "stab.orin.fp16.engine" in manifest["files"] and not (bundle / "stab.trtexec.fp16.engine").exists()
    engine = select_engine(Manifest.load(bundle), "fp16", TrtVersion.parse("10.3.0.30"), ORIN)
    assert engine.to_dict() == record


def test_build_script_refuses_another_tensorrt_and_missing_graphs(jetpack6_bundle: Path, tools) -> None:
    script = str(jetpack6_bundle / "build_engine.sh")
    env = {**os.environ, **tools, "FAKE_TRT_CODE": "8502"}
    result = subprocess.run([script], capture_output=True, text=True, env=env, timeout=60)
    assert result.returncode == 2
    assert "graphs are for TensorRT 10.x (profile 10)" in result.stderr and "TensorRT 8.x" in result.stderr
    result = subprocess.run([script, "int8"], capture_output=True, text=True, env={**os.environ, **tools})
    assert result.returncode == 2 and "no INT8 graph" in result.stderr and "panda calibrate" in result.stderr
    result = subprocess.run([script, "bf16"], capture_output=True, text=True, env={**os.environ, **tools})
    assert result.returncode == 2 and "usage:" in result.stderr
    env = {**os.environ, "TRTEXEC": "/nonexistent/trtexec"}
    result = subprocess.run([script], capture_output=True, text=True, env=env)
    assert result.returncode == 2 and "trtexec not found" in result.stderr


def test_script_names_each_jetpack_and_its_family_commands() -> None:
    text = build_script(_manifest("8.5", int8=True, fp16=False))
    assert "JetPack 5.x and 6.0 (TensorRT 8.5 / 8.6): --trt-profile 8.5" in text
    assert "JetPack 6.1 / 6.2 (TensorRT 10.3): --trt-profile 10" in text
    assert (
        '--onnx=stab.int8.onnx --saveEngine=stab.trtexec.int8.engine --memPoolSize=workspace:"$workspace"'
        in text
    )
    assert '--timingCacheFile="$cache" --int8 --fp16 2>&1 | tee build_engine.int8.log' in text
    assert '[ "$major" != "8" ]' in text


def test_register_with_a_log_of_the_wrong_graph_exits_2(jetpack6_bundle: Path, tools, tmp_path: Path) -> None:
    bundle = _copy_bundle(jetpack6_bundle, tmp_path / "b")
    cmd = [tools["TRTEXEC"], "--onnx=stab.onnx", "--saveEngine=stab.trtexec.fp16.engine", "--stronglyTyped"]
    log = subprocess.run(cmd, capture_output=True, text=True, cwd=bundle, check=True).stdout
    (bundle / "build.log").write_text(log)
    args = ["build-engine", "--bundle", str(bundle), "--register", str(bundle / "stab.trtexec.fp16.engine")]
    result = runner.invoke(app, [*args, "--trtexec-log", str(bundle / "build.log")])
    assert result.exit_code == 2
    assert "trtexec built stab.onnx, fp16 needs stab.fp16.onnx" in result.stderr
    assert "engines" not in json.loads((bundle / "manifest.json").read_text())


# --- the fp16 graph ---------------------------------------------------------------------------------


def test_fp16_graph_keeps_float32_io_and_layer_norm(jetpack6_bundle: Path) -> None:
    model = onnx.load(str(jetpack6_bundle / "stab.fp16.onnx"))
    io = [v.type.tensor_type.elem_type for v in (*model.graph.input, *model.graph.output)]
    assert io == [TensorProto.FLOAT, TensorProto.FLOAT]
    ln_inputs = {
        n for node in model.graph.node if node.op_type == "LayerNormalization" for n in node.input[1:]
    }
    types = {i.name: i.data_type for i in model.graph.initializer}
    assert ln_inputs and all(types[n] == TensorProto.FLOAT for n in ln_inputs)
    others = {
        t
        for name, t in types.items()
        if name not in ln_inputs and t in (TensorProto.FLOAT, TensorProto.FLOAT16)
    }
    assert others == {TensorProto.FLOAT16}
    assert json.loads((jetpack6_bundle / "manifest.json").read_text())["vision_fp16"]["fp32_ops"] == [
        "LayerNormalization"
    ]


def test_fp16_graph_computes_in_fp16_and_matches(jetpack6_bundle: Path) -> None:
    """The reference evaluator runs the fp16 graph in numpy float16 (ONNX Runtime's CPU provider would
    insert float32 casts around ops it has no fp16 kernel for); the tokens match the fp32 graph's."""
    import onnxruntime as ort
    from onnx.reference import ReferenceEvaluator

    rng = np.random.default_rng(0)
    frames = rng.standard_normal((8, 4, 112, 112)).astype(np.float32)
    frames[:, 3] = 0.0
    frames[:, 3, :84, :56] = 1.0  # real pixels in a window-aligned rectangle; the rest is padding
    fp32 = ort.InferenceSession(str(jetpack6_bundle / "stab.onnx"), providers=["CPUExecutionProvider"])
    want = fp32.run(None, {"frames": frames})[0].astype(np.float64)
    got = ReferenceEvaluator(str(jetpack6_bundle / "stab.fp16.onnx")).run(None, {"frames": frames})[0]
    assert got.dtype == np.float32 and got.shape == want.shape
    a, b = want.reshape(-1, want.shape[-1]), got.reshape(-1, want.shape[-1]).astype(np.float64)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.9999 and np.isfinite(got).all()
    assert np.abs(a - b).max() <= 2e-3 * np.abs(a).max()


def test_fp16_conversion_clips_finite_values_and_keeps_infinities() -> None:
    big = numpy_helper.from_array(np.array([-3.4e38, 1e5, 0.5, -np.inf], dtype=np.float32), "big")
    graph = helper.make_graph(
        [
            helper.make_node("Constant", [], ["c"], value=big),
            helper.make_node("Add", ["x", "c"], ["y"]),
            helper.make_node("Cast", ["y"], ["z"], to=TensorProto.FLOAT),
        ],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [4])],
    )
    model = to_fp16(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    onnx.checker.check_model(model, full_check=True)
    constant = next(n for n in model.graph.node if n.op_type == "Constant").attribute[0].t
    values = numpy_helper.to_array(constant)
    assert values.dtype == np.float16 and values.tolist() == [-65504.0, 65504.0, 0.5, -np.inf]
    casts = [(n.input[0], [a.i for a in n.attribute]) for n in model.graph.node if n.op_type == "Cast"]
    assert casts == [
        ("x", [TensorProto.FLOAT16]),
        ("y", [TensorProto.FLOAT16]),
        ("z_fp16", [TensorProto.FLOAT]),
    ]


# --- the command line here (no TensorRT) ------------------------------------------------------------


def test_export_trt_as_a_new_user_runs_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    result = runner.invoke(app, ["export", "--target", "trt", "--checkpoint", "tiny", "--out", "B"])
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in (tmp_path / "B").iterdir())
    assert names == [
        ".verified.json",
        "build_engine.sh",
        "manifest.json",
        "prompt.json",
        "stab.fp16.onnx",
        "stab.onnx",
        "tokenizer.model",
    ]
    assert (
        "no engine built here" in result.stdout
        and "TensorRT's Python package is not installed" in result.stdout
    )
    assert "panda build-engine --bundle B --precision fp16" in result.stdout
    assert "B/build_engine.sh fp16" in result.stdout
    manifest = json.loads((tmp_path / "B" / "manifest.json").read_text())
    assert manifest["vision"]["profile"] == "11" and "build_engine.sh" in manifest["files"]
    assert manifest["vision_fp16"]["file"] == "stab.fp16.onnx"


def test_export_trt_json_and_int8_with_calibration(jetpack6_bundle: Path, tmp_path: Path) -> None:
    args = ["export", "--target", "trt", "--checkpoint", "tiny", "--out", str(tmp_path / "B")]
    result = runner.invoke(app, [*args, "--trt-profile", "8.5", "--json", "-"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["built_here"] is False and report["engine"] is None
    assert report["tensorrt"]["usable"] is False and len(report["next_steps"]) == 4
    assert "JetPack 6.1 / 6.2 (TensorRT 10.3) --trt-profile 10" in report["next_steps"][3]
    assert "vision_fp16" not in report["manifest"]  # TensorRT 8.5 takes fp16 from a builder flag
    result = runner.invoke(app, [*args, "--precision", "int8"])
    assert result.exit_code == 2 and "--videos" in result.stderr  # int8 needs calibration data
    from panda_edge.toyworld.writer import generate

    generate(tmp_path / "toy", videos=4, seed=0, heldout_fraction=0.5)
    calibration = ["--qa", str(tmp_path / "toy" / "train.json"), "--samples", "2", "--holdout", "1"]
    result = runner.invoke(app, [*args, "--precision", "int8", *calibration, "--json", "-"])
    assert result.exit_code == 0, result.output
    manifest = json.loads(result.stdout)["manifest"]
    assert manifest["vision_int8"]["file"] == "stab.int8.onnx" and "stab.int8.onnx" in manifest["files"]
    assert "stab.int8.onnx" in (tmp_path / "B" / "build_engine.sh").read_text()
    result = runner.invoke(app, [*args, "--precision", "int4"])
    assert result.exit_code == 2 and "unknown vision precision 'int4' for TensorRT" in result.stderr


@pytest.mark.skipif(importlib.util.find_spec("tensorrt") is not None, reason="TensorRT is installed here")
def test_build_engine_without_tensorrt_exits_2(jetpack6_bundle: Path) -> None:
    result = runner.invoke(app, ["build-engine", "--bundle", str(jetpack6_bundle)])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "TensorRT's Python package is not installed" in result.stderr and "Traceback" not in result.output
    assert "build_engine.sh (trtexec)" in result.stderr and len(lines) <= 3  # one message, wrapped
    result = runner.invoke(app, ["build-engine", "--bundle", str(jetpack6_bundle), "--trtexec-log", "x.log"])
    assert result.exit_code == 2 and "--trtexec-log goes with --register" in result.stderr


def test_trt_backend_says_why_it_cannot_run(jetpack6_bundle: Path) -> None:
    from panda_edge.runtime.vision import TrtVisionEngine, trt_available
    from panda_edge.runtime.vision.trt import layout_from_manifest

    status = trt_available()
    if status.usable:
        pytest.skip("TensorRT and a GPU are here: see test_engine_matches_onnx_runtime")
    assert status.reason
    with (  # the bundle's engines are read first, on any machine (test_runtime: one that has one)
        pytest.raises(PandaError, match=r"no fp16 TensorRT engine \(it has no engine\); build one"),
        TrtVisionEngine(jetpack6_bundle),
    ):
        pass
    from panda_edge.runtime.vision import OrtVisionEngine

    with OrtVisionEngine(jetpack6_bundle / "stab.onnx") as ort_engine:
        assert layout_from_manifest(Manifest.load(jetpack6_bundle)) == ort_engine.layout


def test_device_side_modules_import_without_torch_or_onnx() -> None:
    code = (
        "import sys\n"
        "import panda_edge.export.trt.engines, panda_edge.runtime.vision.trt, panda_edge.cli.build_engine\n"
        "import panda_edge.plan.footprint, panda_edge.cli.plan\n"
        "sys.exit(sorted(m for m in ('torch', 'onnx') if m in sys.modules) or 0)\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": SRC}
    )
    assert result.returncode == 0, result.stderr


# --- on a machine with a GPU (and TensorRT) ---------------------------------------------------------


def _cosines(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    a, b = a.reshape(-1, a.shape[-1]).astype(np.float64), b.reshape(-1, b.shape[-1]).astype(np.float64)
    return (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)


def test_engine_matches_onnx_runtime(tmp_path: Path) -> None:
    pytest.importorskip("tensorrt", reason="TensorRT is not installable here (docs/design.md §4)")
    from panda_edge.export.trt.engines import build_engine, export_trt
    from panda_edge.runtime.vision import OrtVisionEngine, TrtVisionEngine
    from panda_edge.trt.device import trt_status

    status = trt_status()
    if not status.usable:
        pytest.skip(status.reason)
    profile = family_for(status.tensorrt).profile
    bundle = tmp_path / "bundle"
    export_trt("tiny", bundle, profile, "fp16", build=False)
    build_engine(bundle, "fp16")
    frames = np.random.default_rng(0).standard_normal((8, 4, 112, 112)).astype(np.float32)
    frames[:, 3] = 1.0
    with OrtVisionEngine(bundle / "stab.onnx", providers=["CPUExecutionProvider"]) as ref:
        want = ref.infer({"frames": frames})["visual_tokens"]
    with TrtVisionEngine(bundle, "fp16") as engine:
        got = engine.infer({"frames": frames})["visual_tokens"]
    assert _cosines(want, got).min() > 0.999
