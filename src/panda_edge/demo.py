"""`panda demo`: the main job on the embedded tiny model, from nothing downloaded.

Writes the held-out toy world (same seed the tiny model's training used, so its held-out videos
were never seen in training), answers its questions with the PyTorch reference and reports accuracy.
Later steps (export, runtime, parity) join the same report.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from panda_edge.assets import TINY_TRAINING
from panda_edge.export.stab_onnx.pipeline import export_bundle

DEMO_QUESTIONS = 60


def cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "panda-edge"


@dataclass
class DemoReport:
    workdir: str
    questions: int = 0
    accuracy: float = 0.0
    per_type: dict[str, float] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    parity: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {
            "workdir": self.workdir,
            "reference": {"questions": self.questions, "accuracy": self.accuracy, "per_type": self.per_type},
            "samples": self.samples,
            "parity": self.parity,
            "timings_s": self.timings_s,
        }


def toy_world(workdir: Path) -> Path:
    """The toy world the tiny model was trained on (its held-out split is the test set)."""
    from panda_edge.video.toyworld import generate

    data = workdir / "toyworld"
    if not (data / "heldout.json").is_file():
        generate(data, videos=TINY_TRAINING["videos"], seed=TINY_TRAINING["seed"])
    return data


def run_demo(
    workdir: Path | None = None,
    questions: int = DEMO_QUESTIONS,
    on_step: Callable[[str], None] = lambda text: None,
    on_answer: Callable[[int], None] | None = None,
) -> DemoReport:
    from panda_edge.model.videopanda import VideoPanda, reference_answerer
    from panda_edge.parity.task import evaluate, read_questions

    workdir = workdir or cache_dir() / "demo"
    report = DemoReport(str(workdir))
    start = time.perf_counter()
    on_step("writing the held-out toy world")
    data = toy_world(workdir)
    report.timings_s["toyworld"] = round(time.perf_counter() - start, 2)

    on_step("loading the embedded tiny model")
    start = time.perf_counter()
    model = VideoPanda.from_pretrained("tiny")
    report.timings_s["load"] = round(time.perf_counter() - start, 2)

    on_step(f"answering {questions} held-out questions with the PyTorch reference")
    qa = _spread(read_questions(data / "heldout.json"), questions)
    start = time.perf_counter()
    result = evaluate(reference_answerer(model, max_new_tokens=8), qa, data / "videos", on_answer)
    report.timings_s["reference_answers"] = round(time.perf_counter() - start, 2)
    summary = result.to_dict(with_predictions=True)
    report.questions, report.accuracy, report.per_type = (
        result.questions,
        summary["accuracy"],
        summary["per_type"],
    )
    by_id = {q.id: q for q in qa}
    report.samples = [
        {"video": by_id[p["id"]].video, "question": by_id[p["id"]].question, **p}
        for p in summary["predictions"][:8]
    ]

    on_step("exporting STAB + projector to ONNX and checking stab_fp32 parity")
    start = time.perf_counter()
    bundle = workdir / "bundle"
    export_bundle("tiny", bundle)
    report.timings_s["export_onnx"] = round(time.perf_counter() - start, 2)
    start = time.perf_counter()
    report.parity = vision_parity(model, bundle, _one_video_per_size(qa, data / "videos"))
    report.timings_s["parity"] = round(time.perf_counter() - start, 2)
    return report


def vision_parity(model, bundle: Path, videos: list[Path]) -> dict[str, Any]:
    """stab_fp32: ONNX Runtime on the bundle's graph against the PyTorch reference."""
    from panda_edge.model.vision import VisionTower
    from panda_edge.parity.stab import stab_parity
    from panda_edge.runtime.vision import OrtVisionEngine, TorchVisionReference

    reference = TorchVisionReference(VisionTower.from_model(model))
    with reference, OrtVisionEngine.from_bundle(bundle) as ort:
        return stab_parity(reference, ort, videos, model.config.vision).to_dict()


def _one_video_per_size(questions: list, videos_dir: Path) -> list[Path]:
    """A held-out video of each frame size (square, 16:9, 9:16, 3:2), for the parity check."""
    import av

    chosen: dict[tuple[int, int], Path] = {}
    for q in questions:
        path = videos_dir / q.video
        with av.open(str(path)) as container:
            stream = container.streams.video[0]
            chosen.setdefault((stream.width, stream.height), path)
    return list(chosen.values())


def _spread(items: list, n: int) -> list:
    """n items spread evenly over the list (all question types, not just the first videos)."""
    if n >= len(items):
        return items
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]
