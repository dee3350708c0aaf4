"""Every script in benchmarks/ and benchmarks/gpu/ imports and has its entry point, so a renamed or
removed library function breaks a test, not a benchmark run months later; the GPU parity script runs
its comparisons on ONNX Runtime's CPU provider (the part of it a machine without a GPU can check)."""

from __future__ import annotations

import importlib.util
import json
import sys
from pathlib import Path
from types import ModuleType

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
SCRIPTS = sorted([*BENCHMARKS.glob("*.py"), *BENCHMARKS.glob("gpu/*.py")])


def load_script(path: Path) -> ModuleType:
    """Import a benchmark script by path, its folder on sys.path as when it runs (scripts share helpers),
    and in sys.modules while it runs, as an imported module is (dataclasses look their module up there)."""
    name = f"benchmarks_{path.stem}"
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(name, path)
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
        return module
    finally:
        sys.modules.pop(name, None)
        sys.path.remove(str(path.parent))


def test_the_scripts_are_found() -> None:
    names = {p.name for p in SCRIPTS}
    assert {"gpu_vision_parity.py", "threads_busy_core.py", "tiny_reproduction.py", "pack.py"} <= names


@pytest.mark.parametrize(
    "path", SCRIPTS, ids=[p.relative_to(BENCHMARKS).with_suffix("").as_posix() for p in SCRIPTS]
)
def test_script_imports_without_running_and_has_main(path: Path) -> None:
    module = load_script(path)
    assert callable(getattr(module, "main", None)), f"{path.name} has no main()"
    assert 'if __name__ == "__main__":' in path.read_text(), f"{path.name} must work only when run"


def test_gpu_vision_parity_runs_on_the_cpu_provider(tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    module = load_script(BENCHMARKS / "gpu_vision_parity.py")
    out = tmp_path / "vision_cpu.json"
    assert module.main(["--allow-cpu", "--repeat", "1", "--samples", "2", "--out", str(out)]) == 0
    report = json.loads(out.read_text())
    assert report["onnxruntime"]["providers"] == ["CPUExecutionProvider"]
    assert report["stab_fp32"]["passed"], report["stab_fp32"]
    assert report["stab_fp16"]["passed"], report["stab_fp16"]
    assert report["stab_int8"]["graph"] == "stab.int8.cpu.onnx"
    assert report["stab_int8"]["cosine_mean"] >= 0.99, report["stab_int8"]
    assert report["calibration"]["samples"] == 2
