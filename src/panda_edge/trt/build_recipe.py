"""Which graph of a bundle to build, with which flags, and the equivalent `trtexec` command (pure).

One recipe serves both builders: `export/trt/build.py` sets the recipe's network and builder flags
through the TensorRT Python API, `build_engine.sh` passes its `trtexec` options; both read the same
ONNX file.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from panda_edge.backends import TRT, TrtTarget, check_precision
from panda_edge.bundle import Manifest
from panda_edge.errors import BundleError

DEFAULT_WORKSPACE_MB = 1024
# trtexec options that choose precision or typing; a log's command must carry exactly the recipe's.
PRECISION_OPTIONS = frozenset({"--fp16", "--int8", "--bf16", "--fp8", "--best", "--stronglyTyped"})


@dataclass(frozen=True)
class Recipe:
    family: TrtTarget
    precision: str
    graph_key: str  # manifest entry of the graph: vision, vision_fp16 or vision_int8
    onnx_file: str

    @property
    def network_flags(self) -> tuple[str, ...]:
        return self.family.network_flags

    @property
    def builder_flags(self) -> tuple[str, ...]:
        return self.family.builder_flags[self.precision]

    @property
    def trtexec_flags(self) -> tuple[str, ...]:
        return self.family.trtexec_flags[self.precision]

    def to_dict(self) -> dict[str, Any]:
        return {
            "family": self.family.major,
            "precision": self.precision,
            "graph": self.graph_key,
            "onnx": self.onnx_file,
            "network_flags": list(self.network_flags),
            "builder_flags": list(self.builder_flags),
            "trtexec_flags": list(self.trtexec_flags),
        }


def recipe_for(manifest: Manifest, family: TrtTarget, precision: str, bundle: str = "BUNDLE") -> Recipe:
    """The recipe for `precision` with `family`, or a BundleError that says which export is missing."""
    check_precision(TRT, precision, "TensorRT")
    key = family.graphs[precision]
    if not manifest.has_graph(key):
        raise BundleError(_missing_graph(key, family, bundle))
    graph = manifest.graph(key)
    if graph.profile != family.profile:
        raise BundleError(
            f"{bundle}: {graph.file} was exported for TensorRT profile {graph.profile}; {family.label} "
            f"({family.platform}) builds profile {family.profile} graphs: export again with "
            f"--trt-profile {family.profile}"
        )
    return Recipe(family, precision, key, graph.file)


def _missing_graph(key: str, family: TrtTarget, bundle: str) -> str:
    if key == "vision_int8":
        return (
            f"{bundle}: no INT8 graph (manifest 'vision_int8'); calibrate first: panda calibrate, or "
            f"panda export --target trt --precision int8 --trt-profile {family.profile}"
        )
    if key == "vision_fp16":
        return (
            f"{bundle}: no fp16 graph, which strongly typed {family.label} needs (it has no FP16 flag): "
            f"panda export --target trt --precision fp16 --trt-profile {family.profile}"
        )
    return f"{bundle}: the manifest has no '{key}' graph; export with panda export --target trt"


def gpu_slug(name: str) -> str:
    """'NVIDIA GeForce RTX 4090' -> 'geforce-rtx-4090', 'Orin' -> 'orin': for engine file names."""
    text = re.sub(r"^nvidia\s+", "", name.strip().lower())
    return re.sub(r"[^a-z0-9]+", "-", text).strip("-") or "gpu"


def engine_file_name(gpu_name: str, precision: str) -> str:
    """`stab.<gpu>.<precision>.engine` (docs/design.md §3): one engine per GPU model and precision."""
    return f"stab.{gpu_slug(gpu_name)}.{check_precision(TRT, precision, 'TensorRT')}.engine"


def trtexec_command(
    recipe: Recipe,
    engine_file: str,
    workspace_mb: int | str = DEFAULT_WORKSPACE_MB,
    timing_cache: str | None = "timing.cache",
    trtexec: str = "trtexec",
) -> list[str]:
    """The `trtexec` call that builds what `build.py` builds. --memPoolSize takes MiB (8.5 through 11)."""
    command = [trtexec, f"--onnx={recipe.onnx_file}", f"--saveEngine={engine_file}"]
    command.append(f"--memPoolSize=workspace:{workspace_mb}")
    if timing_cache:
        command.append(f"--timingCacheFile={timing_cache}")
    return command + list(recipe.trtexec_flags)
