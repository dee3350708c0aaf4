"""STAB parity over videos: one reference and candidate engines, per video and overall (no torch).

The engines are any vision backends (`runtime/vision`), active; the PyTorch reference is just
another one. stab_fp32 judges the ONNX graph; stab_int8 judges the INT8 CPU graph as ONNX Runtime
runs it, and reports (and judges) the TensorRT graph with its Q/DQ computed in float beside it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from panda_edge.config import VisionConfig
from panda_edge.parity.compare import LEVELS, OutputParity, combine, compare_tokens
from panda_edge.runtime.vision.base import VisionBackend


@dataclass(frozen=True)
class StabParity:
    level: str
    overall: OutputParity
    videos: tuple[OutputParity, ...]

    @property
    def passed(self) -> bool:
        return self.overall.passed and all(self.videos)

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        """{level: {cosine_min, max_abs_rel, passed, videos: [...]}} as `panda parity --json` writes it;
        stab_int8: {cosine_mean, cosine_min, cosine_histogram, passed, videos: [...]}."""
        overall = self.overall.to_dict()
        if self.level == "stab_int8":
            return {
                self.level: {
                    "cosine_mean": overall["cosine_mean"],
                    "cosine_min": overall["cosine_min"],
                    "cosine_histogram": overall["cosine_histogram"],
                    "tokens": overall["tokens"],
                    "passed": self.passed,
                    "videos": [_video_entry(v) for v in self.videos],
                }
            }
        return {
            self.level: {
                "cosine_min": overall["cosine_min"],
                "max_abs_rel": overall["max_abs_rel"],
                "passed": self.passed,
                "videos": [_video_entry(v) for v in self.videos],
            }
        }


def _video_entry(result: OutputParity) -> dict[str, Any]:
    entry = result.to_dict()
    return {"video": entry.pop("name"), **entry}


def compare_engines(
    reference: VisionBackend,
    candidates: Mapping[str, tuple[VisionBackend, str]],
    videos: Sequence[str | Path],
    vision: VisionConfig,
    on_video: Callable[[int], None] | None = None,
) -> dict[str, StabParity]:
    """{name: (engine, level)} -> {name: parity at that level}; each video decoded and run through the
    reference once for all candidates."""
    from panda_edge.video import load_video

    results: dict[str, list[OutputParity]] = {name: [] for name in candidates}
    for i, video in enumerate(videos):
        frames = load_video(video, vision)
        expected = reference.encode(frames)
        for name, (engine, level) in candidates.items():
            results[name].append(compare_tokens(expected, engine.encode(frames), str(video), LEVELS[level]))
        if on_video is not None:
            on_video(i + 1)
    return {
        name: StabParity(candidates[name][1], combine("all videos", parts), tuple(parts))
        for name, parts in results.items()
    }


@dataclass(frozen=True)
class Int8Parity:
    """stab_int8: the CPU graph (judged, the level's numbers) and the TensorRT graph (judged too)."""

    cpu: StabParity
    tensorrt: StabParity

    @property
    def passed(self) -> bool:
        return self.cpu.passed and self.tensorrt.passed

    def __bool__(self) -> bool:
        return self.passed

    def to_dict(self) -> dict[str, Any]:
        entry = self.cpu.to_dict()["stab_int8"]
        tensorrt = self.tensorrt.to_dict()["stab_int8"]
        tensorrt["graph"] = "stab.int8.onnx, Q/DQ computed in float (what TensorRT's int8 kernels compute)"
        return {
            "stab_int8": {
                **entry,
                "passed": self.passed,
                "graph": "stab.int8.cpu.onnx, as ONNX Runtime runs it",
                "tensorrt_form": tensorrt,
            }
        }


def bundle_vision_parity(
    reference: VisionBackend,
    bundle: str | Path,
    videos: Sequence[str | Path],
    vision: VisionConfig,
    on_video: Callable[[int], None] | None = None,
    threads: int | None = None,
) -> dict[str, StabParity | Int8Parity]:
    """Every vision level `bundle` holds against the active `reference`: {"stab_fp32": StabParity} and,
    after panda calibrate, {"stab_int8": Int8Parity}; each video decoded and referenced once, ONNX
    Runtime on `threads` threads (None: host.default_threads)."""
    from contextlib import ExitStack

    from panda_edge.backends import INT8
    from panda_edge.bundle import VISION_INT8, Manifest
    from panda_edge.errors import PandaError
    from panda_edge.runtime.vision.ort import INT8_TENSORRT, OrtVisionEngine

    int8 = Manifest.load(bundle).has_graph(VISION_INT8)
    engines = {"stab_fp32": (OrtVisionEngine.from_bundle(bundle, threads=threads), "stab_fp32")}
    if int8:
        for precision in (INT8, INT8_TENSORRT):
            engine = OrtVisionEngine.from_bundle(bundle, precision=precision, threads=threads)
            engines[precision] = (engine, "stab_int8")
    with ExitStack() as stack:
        for engine, _ in engines.values():
            stack.enter_context(engine)
            if engine.layout != reference.layout:
                raise PandaError(
                    f"{bundle} was exported for another model geometry ({engine.layout}) than "
                    f"the reference's ({reference.layout})"
                )
        results = compare_engines(reference, engines, videos, vision, on_video)
    levels: dict[str, StabParity | Int8Parity] = {"stab_fp32": results["stab_fp32"]}
    if int8:
        levels["stab_int8"] = Int8Parity(results[INT8], results[INT8_TENSORRT])
    return levels
