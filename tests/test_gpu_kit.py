"""benchmarks/gpu: the kit packs under the 64 MiB a device call may carry, kit.json's sizes and hashes
are its files', a kit over the limit is refused with nothing written, and gpu_runtime.py's dry run
takes the device run's path end to end on this CPU (the GPU run itself needs a borrowed machine)."""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import pytest

from panda_edge.optional import has_llama_cpp

GPU = Path(__file__).resolve().parents[1] / "benchmarks" / "gpu"
LIMIT = 64 * 2**20


def pack(out: Path, downloads: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, str(GPU / "pack.py"), "--out", str(out), "--download-dir", str(downloads), *extra]
    return subprocess.run(argv, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def downloads(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """pip's downloads, shared by this module's packs (the second and later ones download nothing)."""
    return tmp_path_factory.mktemp("gpu-kit-downloads")


@pytest.fixture(scope="module")
def kit(tmp_path_factory: pytest.TempPathFactory, downloads: Path) -> tuple[Path, dict[str, Any]]:
    if not has_llama_cpp():
        pytest.skip("llama-cpp-python is not installed: its version is the one the kit packs")
    out = tmp_path_factory.mktemp("gpu-kit") / ".gpu-kit"
    done = pack(out, downloads, "--json")
    if done.returncode == 2 and "pip download failed" in done.stderr:
        pytest.skip(f"pip could not download the kit's packages here:\n{done.stderr[-1500:]}")
    assert done.returncode == 0, done.stderr[-3000:]
    return out, json.loads(done.stdout)


def test_the_kit_fits_in_what_one_call_carries(kit: tuple[Path, dict[str, Any]]) -> None:
    out, report = kit
    assert report == json.loads((out / "kit.json").read_text())
    assert report["fits"] and report["limit_bytes"] == LIMIT
    assert report["total_bytes"] == report["repo_bytes"] + report["kit_bytes"] <= LIMIT
    on_disk = sum(p.stat().st_size for p in out.rglob("*") if p.is_file())
    assert report["kit_bytes"] == on_disk
    names = {w["name"] for w in report["wheels"]}
    assert {"av", "gguf", "diskcache"} <= names, names  # what the GPU machine's image lacks
    assert not names & {"numpy", "torch", "jinja2", "typing-extensions"}  # what it has
    llama = report["llama_cpp_python"]
    assert llama["version"] == importlib.metadata.version("llama_cpp_python")
    assert (
        llama["source"] in report["files"]
        and llama["kept_bytes"] < llama["pruned"]["vocabulary GGUFs for llama.cpp's tests"]["bytes"]
    )


def test_kit_json_hashes_are_the_files(kit: tuple[Path, dict[str, Any]]) -> None:
    out, report = kit
    listed = set(report["files"])
    assert listed == {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()} - {"kit.json"}
    for name, entry in report["files"].items():
        data = (out / name).read_bytes()
        assert len(data) == entry["bytes"] and hashlib.sha256(data).hexdigest() == entry["sha256"], name


def test_the_source_is_pruned_and_packed_the_same_way_every_time(kit: tuple[Path, dict[str, Any]]) -> None:
    out, report = kit
    llama = report["llama_cpp_python"]
    with tarfile.open(out / llama["source"]) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names) and all(m.mtime == 0 and m.uid == 0 and m.isfile() for m in members)
    top = llama["top"]
    assert f"{top}/vendor/llama.cpp/ggml/src/ggml-cuda/CMakeLists.txt" in names
    assert f"{top}/vendor/llama.cpp/ggml/src/ggml-cpu/CMakeLists.txt" in names
    for pruned in (
        "vendor/llama.cpp/models/",
        "vendor/llama.cpp/docs/",
        "vendor/llama.cpp/ggml/src/ggml-vulkan/",
    ):
        assert not any(n.startswith(f"{top}/{pruned}") for n in names), pruned
    header = (out / llama["source"]).read_bytes()[:10]  # gzip: no file name, no time (RFC 1952)
    assert header[3] & 0x08 == 0 and header[4:8] == b"\0\0\0\0"


def test_a_kit_over_the_limit_exits_2_and_writes_nothing(
    kit: tuple[Path, dict[str, Any]], downloads: Path, tmp_path: Path
) -> None:
    older = tmp_path / ".gpu-kit"  # a kit from before, which a failed pack must leave as it was
    older.mkdir()
    (older / "kit.json").write_text("{}")
    done = pack(older, downloads, "--limit-bytes", "1000000")
    assert done.returncode == 2, done.stderr[-3000:]
    assert "over the limit" in done.stderr and "Traceback" not in done.stderr
    assert [p.name for p in tmp_path.iterdir()] == [".gpu-kit"] and (older / "kit.json").read_text() == "{}"


def test_gpu_runtime_refuses_a_missing_kit(tmp_path: Path) -> None:
    argv = [
        sys.executable,
        str(GPU / "gpu_runtime.py"),
        "--kit",
        str(tmp_path),
        "--work",
        str(tmp_path / "w"),
    ]
    done = subprocess.run([*argv, "--dry-run"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "no kit.json" in done.stderr, done.stderr[-2000:]


def test_gpu_runtime_dry_run_takes_the_device_path(kit: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """The device calls with --dry-run: build and tiny with the release checkpoint written in the
    background (here a small one), then `--phases 7b` as a second call, as when the first ran out of
    time: it reuses that checkpoint and merges into the same report."""
    out, _ = kit
    base = [sys.executable, str(GPU / "gpu_runtime.py"), "--dry-run", "--kit", str(out)]
    base += ["--work", str(tmp_path / "work"), "--out", str(tmp_path / "out" / "gpu_runtime.json")]
    for phases in (["--phases", "build,tiny", "--prepare-7b"], ["--phases", "7b"]):
        done = subprocess.run([*base, *phases], capture_output=True, text=True, timeout=600)
        assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "out" / "gpu_runtime.json").read_text())
    assert report == json.loads((tmp_path / "work" / "gpu_runtime.json").read_text())
    assert [c["phases"] for c in report["calls"]] == [["build", "tiny"], ["7b"]]
    assert all(c["all_ok"] and c["dry_run"] for c in report["calls"])
    phases = report["phases"]
    assert set(phases) == {"setup", "build", "tiny", "7b_prepare", "7b"}
    for name, phase in phases.items():
        for step, record in phase["steps"].items():
            assert record["ok"] and not record["timed_out"], (name, step, record["stderr_tail"])
            assert record["exit"] == 0, (name, step)
    assert report["machine"]["gpu"] is None and report["machine"]["versions"]["av"]
    build = phases["build"]
    assert build["built"] is False and set(build["skipped"]) == {"cuda_build"}
    assert "-DGGML_CUDA=on" in build["cmake_args"] and build["llama_cpp"]["gpu_offload"] is False
    tiny = phases["tiny"]["summary"]
    assert tiny["parity_exit"] == {"tiny_parity_e2e": 0, "tiny_parity_task": 0}
    assert tiny["e2e_identical"] == tiny["e2e_videos"] == 4 and abs(tiny["task_delta_points"]["task"]) <= 1
    assert tiny["stab_fp16_cosine_min"] is None  # the dry run's vision is ONNX Runtime: no torch fp16
    assert phases["tiny"]["gpu_flags"][:2] == ["--vision-device", "cpu"]
    assert phases["7b_prepare"]["steps"]["7b_write_checkpoint"]["result"]["shards"] == 4
    seven = phases["7b"]
    assert seven["checkpoint"].startswith("written before") and "7b_export" in seven["steps"]
    assert seven["plan_device"] == "h100-80gb"
    speed = seven["vision_speed"]
    assert speed["device"] == "cpu" and speed["encode_frames_eager_ms"] > 0
    assert speed["static_compiled_eager-backend_ms"] > 0
    summary = seven["summary"]
    assert summary["ttft_ms"] > 0 and summary["decode_tok_s"] > 0 and summary["first_prefix"] == "computed"
    assert summary["follow_up"]["from_memory"]
    assert summary["disk_cache"]["from_disk"] and summary["disk_cache"]["same_answer"]
    memory = summary["gpu_memory"]
    assert memory["used_bytes"] is None and memory["ratio"] is None and memory["planned_bytes"] > 0


def test_gpu_runtime_stops_at_the_call_deadline(kit: tuple[Path, dict[str, Any]], tmp_path: Path) -> None:
    """A call out of time starts no more steps, says why for each, still writes its report, exits 1."""
    out, _ = kit
    argv = [sys.executable, str(GPU / "gpu_runtime.py"), "--dry-run", "--kit", str(out)]
    argv += ["--work", str(tmp_path / "work"), "--phases", "tiny", "--deadline-s", "3"]
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    assert done.returncode == 1, done.stdout[-3000:] + done.stderr[-3000:]
    report = json.loads((tmp_path / "work" / "gpu_runtime.json").read_text())
    skipped = {**report["phases"]["setup"]["skipped"], **report["phases"]["tiny"]["skipped"]}
    assert {"pip_install_wheels", "tiny_toyworld", "tiny_parity"} <= set(skipped), skipped
    assert "call's deadline is spent" in skipped["tiny_toyworld"]
    assert report["calls"][0]["all_ok"] is False
