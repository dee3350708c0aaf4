"""Questions per second answering a QA set: one process vs a local Ray cluster with 1 and 2 workers.

The embedded tiny model, reference and runtime side by side, one PyTorch thread per worker (what
`panda parity --levels task --ray` and `panda eval --bundle --ray` run), on held-out toy videos.
Each configuration runs once; its seconds include loading the models (in each worker), not Ray's
start (`ray_start_s`); `first_item_s` is when the first video's answers arrived.
Records `benchmarks/results/ray_eval.json`.

    python benchmarks/ray_eval.py [--videos 40] [--json PATH]
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "ray_eval.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--videos", type=int, default=40, help="toy videos (half held out and answered)")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()

    import ray
    import torch

    from panda_edge.export.llm_gguf.export_gguf import export_gguf
    from panda_edge.export.stab_onnx.export_onnx import export_bundle
    from panda_edge.host import cpu_info, load_average
    from panda_edge.parity.qa_jobs import AnswererSpec, answer_questions
    from panda_edge.parity.task import read_questions
    from panda_edge.scaleout.ray_qa import ray_runner
    from panda_edge.timing import quotient
    from panda_edge.toyworld.writer import generate

    with tempfile.TemporaryDirectory(prefix="panda-ray-eval-") as work:
        work_dir = Path(work)
        bundle = work_dir / "tiny"
        export_bundle("tiny", bundle)
        export_gguf("tiny", bundle, "q8_0")
        generate(work_dir / "toy", videos=args.videos, seed=3, heldout_fraction=0.5)
        questions = read_questions(work_dir / "toy" / "heldout.json")
        spec = AnswererSpec("tiny", None, str(bundle))
        videos = work_dir / "toy" / "videos"
        machine = {"cpu": cpu_info(), "load_average_before": load_average()}
        report: dict = {"machine": machine, "questions": len(questions), "runs": {}}
        answers = {}

        def timed(name: str, runner=None) -> None:
            ready: list[float] = []
            start = time.perf_counter()

            def first(done: int) -> None:
                if done and not ready:
                    ready.append(time.perf_counter())

            kwargs = {"runner": runner} if runner is not None else {}
            run = answer_questions(questions, videos, spec, on_answers=first, **kwargs)
            seconds = time.perf_counter() - start
            answers[name] = {i: (r["reference"], r["runtime"]) for i, r in run.records.items()}
            report["runs"][name] = {
                "seconds": round(seconds, 2),
                "questions_per_s": quotient(len(questions), seconds),
                "first_item_s": round(ready[0] - start, 2) if ready else None,
            }
            print(name, report["runs"][name], flush=True)

        # Ray gives each one-CPU worker OMP_NUM_THREADS=1; the one process gets the same, so the runs
        # differ in how the work is spread, not in PyTorch's threads (on a busy 2-core machine two
        # OpenMP threads made the tiny reference 30x slower than one)
        torch.set_num_threads(1)
        timed("one process")
        for workers in (1, 2):
            start = time.perf_counter()
            ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
            report.setdefault("ray_start_s", round(time.perf_counter() - start, 2))
            timed(f"ray, {workers} worker{'s' * (workers > 1)}", ray_runner("local", workers))
            ray.shutdown()
        baseline = answers["one process"]
        machine["load_average_after"] = load_average()
        report["same_answers_everywhere"] = all(a == baseline for a in answers.values())
        one = report["runs"]["ray, 1 worker"]["questions_per_s"]
        two = report["runs"]["ray, 2 workers"]["questions_per_s"]
        report["two_vs_one_worker"] = quotient(two, one)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
