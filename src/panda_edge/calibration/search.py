"""Accuracy-driven mixed precision: which layer groups stay float so the visual tokens stay close.

Each candidate graph runs in ONNX Runtime on the calibration videos and is compared, token by token
where the runtime keeps tokens (`TokenLayout.select`: padded grid tokens out), with the fp32
graph. The fp32 graph matches the PyTorch reference to cosine >= 0.99999 (the stab_fp32 level), so
it stands in for it here, without torch.

Sensitivity: each group quantized alone, in the TensorRT form with its Q/DQ computed in float
(what TensorRT's integer kernels compute). Then greedily: every group in INT8; while a form misses
the target mean cosine, the group whose alone-cosine is lowest goes back to float. Both forms must
reach the target: the TensorRT form, and the CPU form as ONNX Runtime runs it.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from panda_edge.calibration.groups import GROUPS, OTHER, group_nodes
from panda_edge.calibration.qdq import CPU, TENSORRT, QdqWriter
from panda_edge.host import default_threads
from panda_edge.optional import onnxruntime
from panda_edge.parity.compare import LEVELS, OutputParity, Thresholds, combine, compare_tokens
from panda_edge.runtime.vision.ort import session_options
from panda_edge.token_layout import FRAMES, METADATA_KEY, VISUAL_TOKENS, TokenLayout

DESCRIPTIONS = {g.name: g.description for g in (*GROUPS, OTHER)}


class TokenScorer:
    """The fp32 graph's kept tokens on some videos, and the same tokens of any candidate graph."""

    def __init__(
        self,
        fp32: onnx.ModelProto | str | Path,
        videos: np.ndarray,
        target: float,
        threads: int | None = None,
    ) -> None:
        model = fp32 if isinstance(fp32, onnx.ModelProto) else onnx.load(str(fp32), load_external_data=False)
        meta = {p.key: p.value for p in model.metadata_props}
        if METADATA_KEY not in meta:
            raise ValueError(f"not a panda-edge STAB graph (no '{METADATA_KEY}' metadata)")
        self.layout = TokenLayout.from_json(meta[METADATA_KEY])
        self.videos = videos
        self.threads = default_threads(threads)
        self.thresholds = Thresholds(cosine_mean=target)
        self.rects = [self.layout.frame_rects(v) for v in videos]
        self.reference = self.tokens(fp32 if isinstance(fp32, onnx.ModelProto) else Path(fp32))

    def tokens(self, model: onnx.ModelProto | Path, qdq_in_float: bool = False) -> list[list[np.ndarray]]:
        """Per video, per frame: the tokens the runtime keeps."""
        ort = onnxruntime()
        source = str(model) if isinstance(model, Path) else model.SerializeToString()
        session = ort.InferenceSession(
            source, session_options(self.threads, qdq_in_float), providers=["CPUExecutionProvider"]
        )
        return [
            self.layout.select(session.run([VISUAL_TOKENS], {FRAMES: v})[0], rects)
            for v, rects in zip(self.videos, self.rects, strict=True)
        ]

    def score(self, model: onnx.ModelProto, qdq_in_float: bool = False, name: str = "") -> OutputParity:
        """Per-token cosine against the fp32 graph, over all videos."""
        candidate = self.tokens(model, qdq_in_float)
        parts = [
            compare_tokens(r, c, f"video {i}", self.thresholds)
            for i, (r, c) in enumerate(zip(self.reference, candidate, strict=True))
        ]
        return combine(name, parts)


@dataclass
class GroupResult:
    name: str
    nodes: list[str]
    alone: OutputParity  # this group alone in INT8 (TensorRT form)
    precision: str = "int8"
    reason: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "description": DESCRIPTIONS[self.name],
            "nodes": len(self.nodes),
            "precision": self.precision,
            "alone_cosine_mean": self.alone.cosine_mean,
            "alone_cosine_min": self.alone.cosine_min,
            "reason": self.reason,
        }


@dataclass
class MixedPrecision:
    target: float
    groups: dict[str, GroupResult]
    float_groups: list[str]
    tensorrt: OutputParity
    cpu: OutputParity
    steps: list[dict[str, Any]] = field(default_factory=list)

    @property
    def quantized_nodes(self) -> list[str]:
        return [n for g in self.groups.values() if g.precision == "int8" for n in g.nodes]

    def to_dict(self) -> dict[str, Any]:
        return {
            "target_cosine": self.target,
            "float_groups": list(self.float_groups),
            "groups": {name: g.to_dict() for name, g in self.groups.items()},
            "steps": self.steps,
        }


def choose_precision(
    writer: QdqWriter,
    scorer: TokenScorer,
    target: float = LEVELS["stab_int8"].cosine_mean,
    on_step: Callable[[str], None] | None = None,
) -> MixedPrecision:
    """Measure every group alone, then put the most harmful groups back to float until both forms
    reach `target` mean cosine on the scorer's videos."""
    step = on_step or (lambda message: None)
    grouped = group_nodes(writer.nodes)
    groups: dict[str, GroupResult] = {}
    for i, (name, nodes) in enumerate(grouped.items()):
        step(f"sensitivity {i + 1}/{len(grouped)}: {name} alone in INT8")
        groups[name] = GroupResult(name, nodes, scorer.score(writer.write(nodes, TENSORRT), True, name))
    order = sorted(groups, key=lambda g: groups[g].alone.cosine_mean)  # most harmful first
    floated: list[str] = []
    steps: list[dict[str, Any]] = []
    while True:
        quantized = [n for name, g in groups.items() if name not in floated for n in g.nodes]
        label = f"{len(floated)} group(s) in float" if floated else "every group in INT8"
        step(f"{label}: scoring the TensorRT form")
        tensorrt = scorer.score(writer.write(quantized, TENSORRT), True, "tensorrt")
        cpu = None
        last = len(floated) == len(order)
        if tensorrt.cosine_mean >= target or last:
            step(f"{label}: scoring the CPU form")
            cpu = scorer.score(writer.write(quantized, CPU), False, "cpu")
        steps.append(_step_entry(floated, tensorrt, cpu))
        if cpu is not None and (cpu.cosine_mean >= target or last):
            break
        worst = order[len(floated)]
        missed = ("TensorRT", tensorrt) if cpu is None else ("CPU", cpu)
        groups[worst].precision = "float"
        groups[worst].reason = (
            f"alone in INT8 it gives mean cosine {groups[worst].alone.cosine_mean:.6f}, the lowest of the "
            f"groups still in INT8; with {_names(floated)} in float the {missed[0]} form reached "
            f"{missed[1].cosine_mean:.5f} < {target}"
        )
        floated.append(worst)
    for g in groups.values():
        if g.precision == "int8":
            g.reason = (
                f"alone in INT8 it gives mean cosine {g.alone.cosine_mean:.6f}; the target holds with it"
            )
    return MixedPrecision(target, groups, floated, tensorrt, cpu, steps)


def _names(groups: Sequence[str]) -> str:
    return ", ".join(groups) if groups else "no group"


def _step_entry(floated: list[str], tensorrt: OutputParity, cpu: OutputParity | None) -> dict[str, Any]:
    entry: dict[str, Any] = {
        "float_groups": list(floated),
        "tensorrt_cosine_mean": tensorrt.cosine_mean,
        "tensorrt_cosine_min": tensorrt.cosine_min,
    }
    if cpu is not None:
        entry.update(cpu_cosine_mean=cpu.cosine_mean, cpu_cosine_min=cpu.cosine_min)
    return entry
