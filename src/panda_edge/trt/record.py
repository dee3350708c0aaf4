"""Engine records in the manifest, and whether one can run here (pure; no TensorRT, no GPU).

A serialized engine runs only with the TensorRT release that built it and on the GPU model it was
tuned for, so each record names both, and the runtime compares them with what it finds before it
deserializes anything. `trtexec` logs are parsed here too: they carry the same facts (TensorRT
version, device name, compute capability) when the engine was built without TensorRT's Python API.
"""

from __future__ import annotations

import re
import shlex
from dataclasses import dataclass
from typing import Any

from panda_edge.bundle import Engine, Manifest
from panda_edge.errors import BundleError
from panda_edge.trt.build_recipe import PRECISION_OPTIONS, Recipe
from panda_edge.trt.versions import TrtVersion


class EngineMismatch(BundleError):
    """The bundle's engine was built for another GPU or TensorRT release: rebuild it on this device."""


@dataclass(frozen=True)
class GpuInfo:
    name: str
    compute_capability: str  # "8.7"

    def to_dict(self) -> dict[str, str]:
        return {"name": self.name, "compute_capability": self.compute_capability}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> GpuInfo:
        return cls(str(data["name"]), str(data["compute_capability"]))

    def __str__(self) -> str:
        return f"{self.name} (compute capability {self.compute_capability})"


def engine_record(
    *,
    file: str,
    recipe: Recipe,
    version: TrtVersion,
    gpu: GpuInfo,
    source_sha256: str,
    inputs: dict[str, Any],
    outputs: dict[str, Any],
    workspace_mb: int,
    builder: str,
    **extra: Any,
) -> dict[str, Any]:
    """What the manifest says of one engine (its sha256 and size are in the manifest's `files`)."""
    return {
        "file": file,
        "precision": recipe.precision,
        "tensorrt": str(version),
        "tensorrt_family": recipe.family.major,
        "gpu": gpu.to_dict(),
        "profile": recipe.family.profile,
        "source": {"file": recipe.onnx_file, "graph": recipe.graph_key, "sha256": source_sha256},
        "inputs": inputs,
        "outputs": outputs,
        "network_flags": list(recipe.network_flags),
        "builder_flags": list(recipe.builder_flags),
        "workspace_mb": workspace_mb,
        "builder": builder,
        **extra,
    }


def engine_problems(record: Engine, version: TrtVersion, gpu: GpuInfo) -> list[str]:
    """Why the engine of `record` cannot run with TensorRT `version` on `gpu`; empty when it can."""
    problems = []
    built = TrtVersion.parse(record.tensorrt)
    # TensorRT checks the full version when it deserializes; a trtexec log gives major.minor.patch only.
    both_have_build = built.build is not None and version.build is not None
    if built.release != version.release or (both_have_build and built.build != version.build):
        problems.append(f"it was built with TensorRT {built}, this machine has TensorRT {version}")
    made_for = GpuInfo.from_dict(record.gpu)
    if made_for.compute_capability != gpu.compute_capability:
        problems.append(f"it was built for {made_for}, this GPU is {gpu}")
    elif made_for.name != gpu.name:
        problems.append(f"it was built on a {made_for.name}, this GPU is a {gpu.name}")
    return problems


def engines_of_precision(manifest: Manifest, precision: str, bundle: str = "BUNDLE") -> list[Engine]:
    """The bundle's engine records of `precision`, or an error naming the engines it has instead.

    Pure: the runtime calls it before TensorRT is imported, so asking for an engine the bundle lacks
    is refused the same way on every machine, never answered by an engine of another precision.
    """
    candidates = manifest.engines_of(precision)
    if not candidates:
        has = "; ".join(
            f"{r.file} ({r.precision}, TensorRT {r.tensorrt}, {r.gpu_name})"
            for r in manifest.engines.values()
        )
        raise BundleError(
            f"{bundle}: no {precision} TensorRT engine (it has {has or 'no engine'}); build one on "
            f"this device: panda build-engine --bundle {bundle} --precision {precision}"
        )
    return candidates


def select_engine(
    manifest: Manifest, precision: str, version: TrtVersion, gpu: GpuInfo, bundle: str = "BUNDLE"
) -> Engine:
    """The bundle's `precision` engine that runs here, or an error that says to rebuild it."""
    rebuild = f"panda build-engine --bundle {bundle} --precision {precision}"
    candidates = engines_of_precision(manifest, precision, bundle)
    for record in candidates:
        if not engine_problems(record, version, gpu):
            return record
    record = candidates[0]
    reasons = "; ".join(engine_problems(record, version, gpu))
    raise EngineMismatch(
        f"{bundle}: {record.file} cannot run here: {reasons}. An engine is specific to one GPU model "
        f"and one TensorRT release; rebuild it on this device: {rebuild}"
    )


# --- trtexec logs -----------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrtexecLog:
    version: TrtVersion | None
    gpu: GpuInfo | None
    status: str | None  # RUNNING (cut short), PASSED, FAILED, WAIVED
    command: list[str]
    gpu_compute_median_ms: float | None

    def option(self, name: str) -> str | None:
        """The value of `--name=value` in the logged command line."""
        for arg in self.command:
            if arg.startswith(f"{name}="):
                return arg.split("=", 1)[1]
        return None

    def precision_options(self) -> set[str]:
        return {arg for arg in self.command if arg in PRECISION_OPTIONS}


_STATUS = re.compile(
    r"^&&&& (RUNNING|PASSED|FAILED|WAIVED) TensorRT\.trtexec \[TensorRT v(\d+)\] # (.*)$", re.M
)


def parse_trtexec_log(text: str) -> TrtexecLog:
    """What a `trtexec` run logged about itself (see samples/common/sampleDevice.cpp, logging.h)."""
    statuses = _STATUS.findall(text)
    version = None
    if found := re.search(r"\bTensorRT version: (\d+\.\d+\.\d+)", text):
        version = TrtVersion.parse(found.group(1))
    elif statuses:
        version = TrtVersion.parse(statuses[0][1])
    name = re.search(r"\bSelected Device: (.+?)\s*$", text, re.M)
    capability = re.search(r"\bCompute Capability: (\d+\.\d+)", text)
    gpu = GpuInfo(name.group(1), capability.group(1)) if name and capability else None
    median = re.search(r"\bGPU Compute Time: .*?\bmedian = ([\d.]+) ms", text)
    return TrtexecLog(
        version=version,
        gpu=gpu,
        status=statuses[-1][0] if statuses else None,
        command=shlex.split(statuses[0][2]) if statuses else [],
        gpu_compute_median_ms=float(median.group(1)) if median else None,
    )


def log_problems(log: TrtexecLog, recipe: Recipe, engine_name: str) -> list[str]:
    """Why a `trtexec` log does not show `recipe` built into `engine_name`; empty when it does."""
    problems = []
    if log.status != "PASSED":
        problems.append(f"trtexec did not finish (status {log.status or 'not found'})")
    if log.version is None or log.gpu is None:
        problems.append("the log names no TensorRT version or GPU (was it written by trtexec?)")
    onnx = log.option("--onnx")
    if onnx is None or onnx.rsplit("/", 1)[-1] != recipe.onnx_file:
        problems.append(f"trtexec built {onnx or 'no --onnx'}, {recipe.precision} needs {recipe.onnx_file}")
    saved = log.option("--saveEngine")
    if saved is None or saved.rsplit("/", 1)[-1] != engine_name:
        problems.append(f"trtexec saved {saved or 'no --saveEngine'}, not {engine_name}")
    want = set(recipe.trtexec_flags)
    if log.precision_options() != want:
        got = " ".join(sorted(log.precision_options())) or "no precision options"
        problems.append(
            f"trtexec ran with {got}; {recipe.precision} with {recipe.family.label} needs "
            f"{' '.join(sorted(want)) or 'no precision options'}"
        )
    return problems
