"""`panda demo`: the main job on the embedded tiny model, from nothing downloaded.

Writes the held-out toy world (same seed the tiny model's training used, so its held-out videos
were never seen in training), answers its questions with the PyTorch reference and reports accuracy.
Later steps (export, runtime, parity) join the same report.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from panda_edge.backends import FP32, ORT, PRECISIONS, REFERENCE_GGUF_TYPE, RUNTIME_GGUF_TYPE
from panda_edge.export.stab_onnx.export_onnx import export_bundle
from panda_edge.fileio import cache_dir
from panda_edge.model.loading import ReferencePrecision
from panda_edge.toyworld.writer import tiny_training_world

DEMO_QUESTIONS: int | None = None  # all held-out questions: "within 1 point" needs >= 100
E2E_VIDEOS = 20
CALIBRATION_VIDEOS = 8


@dataclass
class DemoReport:
    workdir: str
    questions: int = 0
    accuracy: float = 0.0
    per_type: dict[str, float] = field(default_factory=dict)
    samples: list[dict[str, Any]] = field(default_factory=list)
    runtime: dict[str, Any] = field(default_factory=dict)  # "<vision> + <gguf>" -> accuracy, timings
    parity: dict[str, Any] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    skipped: list[str] = field(default_factory=list)
    reference_ran: dict[str, str] = field(default_factory=dict)  # the PyTorch reference's dtype, device

    def to_dict(self) -> dict[str, Any]:
        return {
            "workdir": self.workdir,
            "reference": {
                "questions": self.questions,
                "accuracy": self.accuracy,
                "per_type": self.per_type,
                **self.reference_ran,
            },
            "runtime": self.runtime,
            "samples": self.samples,
            "parity": self.parity,
            "timings_s": self.timings_s,
            "skipped": self.skipped,
        }


class _Clock:
    """Named wall-clock spans into the report."""

    def __init__(self, timings: dict[str, float]) -> None:
        self.timings = timings

    def __call__(self, name: str):
        from contextlib import contextmanager

        @contextmanager
        def span():
            start = time.perf_counter()
            yield
            self.timings[name] = round(time.perf_counter() - start, 2)

        return span()


def run_demo(
    workdir: Path | None = None,
    questions: int | None = DEMO_QUESTIONS,
    precision: ReferencePrecision | None = None,
    on_step: Callable[[str], None] | None = None,
    on_answer: Callable[[int], None] | None = None,
    threads: int | None = None,
) -> DemoReport:
    """The whole chain on the embedded model: reference answers, ONNX + GGUF export, the runtime's
    answers (ONNX Runtime vision + llama.cpp), and parity (stab_fp32, e2e, task) with timings.
    `threads`: the runtime's CPU threads (None: `host.default_threads`)."""
    from panda_edge.model.videopanda import VideoPanda, reference_answerer
    from panda_edge.optional import has_llama_cpp
    from panda_edge.parity.task import evaluate, read_questions

    on_step = on_step or (lambda text: None)
    workdir = workdir or cache_dir() / "demo"
    report = DemoReport(str(workdir))
    clock = _Clock(report.timings_s)
    on_step("writing the held-out toy world")
    with clock("toyworld"):
        data = tiny_training_world(workdir)
    videos = data / "videos"

    on_step("loading the embedded tiny model")
    with clock("load"):
        model = VideoPanda.from_pretrained("tiny", precision)
    report.reference_ran = {"dtype": model.precision.dtype, "device": model.precision.device}

    qa = _spread(read_questions(data / "heldout.json"), questions)
    on_step(f"answering {len(qa)} held-out questions with the PyTorch reference")
    with clock("reference_answers"):
        reference = evaluate(reference_answerer(model, max_new_tokens=16), qa, videos, on_answer)
    summary = reference.to_dict(with_predictions=True)
    report.questions, report.accuracy, report.per_type = (
        reference.questions,
        summary["accuracy"],
        summary["per_type"],
    )
    by_id = {q.id: q for q in qa}
    report.samples = [
        {"video": by_id[p["id"]].video, "question": by_id[p["id"]].question, **p}
        for p in summary["predictions"][:8]
    ]

    on_step("exporting STAB + projector to ONNX")
    bundle = workdir / "bundle"
    with clock("export_onnx"):
        export_bundle("tiny", bundle)
    on_step("calibrating INT8 on training videos (TensorRT Q/DQ and ONNX Runtime graphs)")
    with clock("calibrate_int8"):
        from panda_edge.calibration.calibrate import calibrate_bundle

        calibrate_bundle(bundle, videos=videos, qa=data / "train.json", samples=CALIBRATION_VIDEOS)
    on_step("checking stab_fp32 and stab_int8 parity")
    with clock("parity_vision"):
        report.parity = vision_parity(model, bundle, _one_video_per_size(qa, videos))
    if not has_llama_cpp():
        report.skipped.append(
            "GGUF export and the llama.cpp runtime: llama-cpp-python is not installed "
            '(CMAKE_ARGS="-DLLAVA_BUILD=off" pip install "panda-edge[llama]")'
        )
        return report
    _runtime_chain(model, bundle, qa, videos, reference, report, clock, on_step, on_answer, threads)
    return report


def _runtime_chain(
    model, bundle: Path, qa: list, videos: Path, reference, report, clock, on_step, on_answer, threads
):
    """GGUF export, then the runtime's answers and the e2e / task levels."""
    from panda_edge.export.llm_gguf.export_gguf import export_gguf
    from panda_edge.host import default_threads
    from panda_edge.parity.e2e import one_question_per_video
    from panda_edge.parity.report import task_key
    from panda_edge.parity.runtime_answers import (
        measure_e2e,
        measure_gguf_agreement,
        measure_task,
        reference_tokens,
    )
    from panda_edge.runtime.options import RuntimeOptions

    runtime = RuntimeOptions(threads=default_threads(threads))
    for gguf_type in (REFERENCE_GGUF_TYPE, RUNTIME_GGUF_TYPE):
        on_step(f"exporting the Llama backbone to GGUF ({gguf_type})")
        with clock(f"export_gguf_{gguf_type}"):
            export_gguf("tiny", bundle, gguf_type)
    tasks = {}
    for precision in PRECISIONS[ORT]:
        on_step(
            f"answering the {len(qa)} questions with the runtime (ONNX Runtime {precision} + llama.cpp "
            f"{RUNTIME_GGUF_TYPE})"
        )
        with clock(f"runtime_answers_{precision}"):
            task = measure_task(
                reference,
                bundle,
                qa,
                videos,
                RUNTIME_GGUF_TYPE,
                precision,
                runtime,
                on_answer=on_answer,
            )
        tasks[precision] = task
        report.parity[task_key(precision)] = task.to_dict()
        per_type = task.runtime.to_dict()["per_type"]
        # a quantization error in one path of STAB (motion: the temporal one) shows in its type
        deltas = {k: round((v - report.per_type[k]) * 100, 2) for k, v in per_type.items()}
        report.runtime[f"ort {precision} + {RUNTIME_GGUF_TYPE}"] = {
            "accuracy": round(task.runtime.accuracy, 4),
            "per_type": per_type,
            "per_type_delta_points": deltas,
            "seconds": report.timings_s[f"runtime_answers_{precision}"],
        }
    on_step(
        f"the same questions with the {REFERENCE_GGUF_TYPE} GGUF: does {RUNTIME_GGUF_TYPE} change any answer?"
    )
    with clock("gguf_agreement"):
        report.parity["task"]["gguf_agreement"] = measure_gguf_agreement(
            bundle, tasks[FP32], qa, videos, runtime=runtime
        )
    chosen = one_question_per_video(qa, E2E_VIDEOS)
    on_step(f"e2e parity: runtime (fp32 vision + f32 GGUF) vs reference, {len(chosen)} videos")
    with clock("parity_e2e"):
        expected = reference_tokens(model, chosen, videos)
        report.parity["e2e"] = measure_e2e(expected, bundle, chosen, videos, runtime=runtime).to_dict()


def vision_parity(model, bundle: Path, videos: list[Path]) -> dict[str, Any]:
    """stab_fp32 and stab_int8: ONNX Runtime on the bundle's graphs against the PyTorch reference."""
    from panda_edge.model.vision import VisionTower
    from panda_edge.parity.stab import bundle_vision_parity
    from panda_edge.runtime.vision import TorchVisionReference

    with TorchVisionReference(VisionTower.from_model(model)) as reference:
        levels = bundle_vision_parity(reference, bundle, videos, model.config.vision)
    out: dict[str, Any] = {}
    for level in levels.values():
        out.update(level.to_dict())
    return out


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


def _spread(items: list, n: int | None) -> list:
    """n items spread evenly over the list (all question types, not just the first videos)."""
    if n is None or n >= len(items):
        return items
    step = len(items) / n
    return [items[int(i * step)] for i in range(n)]
