"""The tiny reference's time per question on an idle machine and with one core held busy by another
process, per thread setting: what `panda_edge.host.default_threads` is for.

    python benchmarks/threads_busy_core.py [--questions N] [--cases before,1,default] [--out PATH]

Cases: `before` is what panda-edge did before the rule (one PyTorch thread per core this process may
use); `N` is N threads; `default` is the rule (the cores other processes leave idle when it starts).
OpenMP waits as it does by default (spin, then sleep) in every case. Each (case, idle|busy) runs in its own
process (OpenMP reads its settings once): it loads the embedded tiny model, answers one question to
warm up, then times `--questions` held-out toy-world questions, one video each. "busy" starts
`python -c "while True: pass"` pinned to the last core this process may use, for the whole case.

Writes benchmarks/results/threads_busy_core.json: median seconds per question, busy / idle per case,
the CPU, the load average before and after. The goal (docs/design.md §6): with the default threads,
busy within 2x of idle. Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "threads_busy_core.json"
DEFAULT, BEFORE = "default", "before"


def answer_times(toy: Path, questions: int, case: str) -> dict[str, Any]:
    """Seconds per question of the tiny reference in `case` (see the module's docstring), and the
    PyTorch threads it ran with."""
    import torch

    from panda_edge.host import available_cores, use_threads
    from panda_edge.model.videopanda import VideoPanda

    threads = use_threads(available_cores() if case == BEFORE else None if case == DEFAULT else int(case))
    model = VideoPanda.from_pretrained("tiny")
    entries = json.loads((toy / "heldout.json").read_text())
    chosen = list({e["video"]: e for e in entries}.values())[: questions + 1]  # one per video
    times = []
    with torch.inference_mode():
        for entry in chosen:
            start = time.perf_counter()
            model.generate(toy / "videos" / entry["video"], entry["question"], max_new_tokens=8)
            times.append(time.perf_counter() - start)
    return {"threads": threads, "seconds": times[1:]}  # the first warmed up


def run_case(toy: Path, questions: int, case: str, busy: bool) -> dict[str, Any]:
    """One case in a fresh process, with the busy loop running beside it when `busy`."""
    cores = sorted(os.sched_getaffinity(0))
    hog = None
    if busy:
        pin = f"import os; os.sched_setaffinity(0, {{{cores[-1]}}})\nwhile True: pass"
        hog = subprocess.Popen([sys.executable, "-c", pin])
        time.sleep(0.5)  # let it take its core
    try:
        args = ["--child", str(toy), "--questions", str(questions), "--cases", case]
        env = {k: v for k, v in os.environ.items() if k not in ("OMP_WAIT_POLICY", "OMP_NUM_THREADS")}
        command = [sys.executable, __file__, *args]
        done = subprocess.run(command, capture_output=True, text=True, check=True, env=env)
    finally:
        if hog is not None:
            hog.kill()
            hog.wait()
    result = json.loads(done.stdout.strip().splitlines()[-1])
    times = result["seconds"]
    return {
        "threads": result["threads"],
        "median_s": round(statistics.median(times), 4),
        "seconds": [round(t, 4) for t in times],
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--questions", type=int, default=8)
    parser.add_argument("--cases", default=f"{BEFORE},1,{DEFAULT}", help="comma-separated (see above)")
    parser.add_argument("--out", type=Path, default=RESULTS)
    parser.add_argument("--child", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:  # one case: print the times as the last line
        print(json.dumps(answer_times(args.child, args.questions, args.cases)))
        return

    from panda_edge.host import available_cores, busy_cores, cpu_info, default_threads, load_average
    from panda_edge.toyworld.writer import generate

    name, features = cpu_info()
    report: dict[str, Any] = {
        "machine": {"cpu": name, "features": features, "cores": available_cores()},
        "load_average_before": load_average(),
        "busy_cores_before": busy_cores(),
        "default_threads_before": default_threads(),
        "questions": args.questions,
        "goal": "busy <= 2x idle per question with the default threads (docs/design.md §6)",
        "cases": {},
    }
    with tempfile.TemporaryDirectory(prefix="panda-threads-") as tmp:
        toy = Path(tmp) / "toy"
        generate(toy, videos=max(20, 4 * (args.questions + 1)), seed=0)
        for case in args.cases.split(","):
            idle = run_case(toy, args.questions, case, busy=False)
            busy = run_case(toy, args.questions, case, busy=True)
            report["cases"][case] = {
                "idle": idle,
                "busy": busy,
                "busy_over_idle": round(busy["median_s"] / idle["median_s"], 2),
            }
            print(
                f"{case}: idle {idle['median_s']} s ({idle['threads']} threads), "
                f"busy {busy['median_s']} s ({busy['threads']} threads)",
                file=sys.stderr,
            )
    report["load_average_after"] = load_average()
    if DEFAULT in report["cases"]:
        report["goal_met"] = report["cases"][DEFAULT]["busy_over_idle"] <= 2.0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}", file=sys.stderr)


if __name__ == "__main__":
    main()
