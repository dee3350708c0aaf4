"""`panda run`'s peak RSS against `panda plan --device cpu`'s total, on one bundle, per llama.cpp build.

The plan counts the GGUF once. llama.cpp repacks q4_0 / q4_K weights for its AVX2 / AVX-512 / NEON
kernels on most CPUs; on CPUs with AMX panda-edge loads them into plain buffers instead (see
runtime/llm/llamacpp.py). To see both cases on one machine, give a second llama-cpp-python build
with `--llama NAME=DIR` (a `pip install --target DIR` of a wheel built without AMX, for example
CMAKE_ARGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=ON -DGGML_AVX512_VNNI=ON -DGGML_FMA=ON
-DGGML_F16C=ON"); each build's `panda run` runs in its own process under `/usr/bin/time -v`.

    python benchmarks/run_vs_plan.py --bundle B [--video V] [--gguf-type q4_k_m] [--llama noamx=DIR] \
        [--json benchmarks/results/run_vs_plan_7b.json]

Records each run's peak RSS over the plan's total (the goal: within 15%), llama.cpp's system info
(AMX, REPACK) and the CPU's features.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).parent / "results" / "run_vs_plan_7b.json"
QUESTION = "What is moving in the video?"


def llama_system_info(pythonpath: str | None) -> str:
    """What the llama.cpp on `pythonpath` (else the installed one) was built with."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH")) if p)
    code = "import llama_cpp; print(llama_cpp.llama_print_system_info().decode())"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    return done.stdout.strip()


def plan_total_mb(bundle: Path, gguf_type: str, logs: Path) -> tuple[float, dict[str, Any]]:
    from panda_edge.bench.process import timed_panda

    out = logs / "plan.json"
    record = timed_panda(
        "plan", ["plan", "--device", "cpu", "--bundle", str(bundle), "--json", str(out)], logs / "plan.log"
    )
    plan = json.loads(out.read_text())
    option = next(o for o in plan["options"] if o["gguf_type"] == gguf_type)
    return option["total_bytes"] / 2**20, record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bundle", type=Path, required=True)
    parser.add_argument("--video", type=Path, default=None, help="default: an 8-second 640x320 clip")
    parser.add_argument("--gguf-type", default="q4_k_m")
    parser.add_argument("--max-new-tokens", type=int, default=16)
    parser.add_argument("--llama", action="append", default=[], help="NAME=DIR: another llama-cpp-python")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args(argv)

    from panda_edge.bench.e2e import bench_video
    from panda_edge.bench.process import timed_panda
    from panda_edge.host import cpu_info, load_average

    builds: dict[str, str | None] = {"installed": None}
    for item in args.llama:
        name, _, directory = item.partition("=")
        builds[name] = directory
    name, features = cpu_info()
    report: dict[str, Any] = {
        "machine": {"cpu": name, "features": features, "cores": os.cpu_count()},
        "load_average_before": load_average(),
        "bundle": str(args.bundle),
        "gguf_type": args.gguf_type,
        "runs": {},
    }
    with tempfile.TemporaryDirectory(prefix="panda-run-vs-plan-") as tmp:
        logs = Path(tmp)
        video = args.video or bench_video(logs / "clip.mp4", (640, 320))
        planned, plan_record = plan_total_mb(args.bundle, args.gguf_type, logs)
        report["plan"] = {**plan_record, "total_mb": round(planned)}
        for build, pythonpath in builds.items():
            run_args = [
                "run", "--bundle", str(args.bundle), str(video), QUESTION, "--gguf-type", args.gguf_type,
                "--max-new-tokens", str(args.max_new_tokens), "--json", str(logs / f"{build}.json"),
            ]  # fmt: skip
            record = timed_panda(f"run ({build})", run_args, logs / f"run_{build}.log", pythonpath=pythonpath)
            info = llama_system_info(pythonpath)
            result = json.loads((logs / f"{build}.json").read_text()) if record["exit"] == 0 else None
            peak = record["peak_rss_mb"]
            report["runs"][build] = {
                **{k: v for k, v in record.items() if k != "log"},
                "llama_system_info": info,
                "amx": "AMX_INT8 = 1" in info,
                "peak_over_plan": None if peak is None else round(peak / planned, 3),
                "result": result,
            }
    report["load_average_after"] = load_average()
    report["goal"] = "each run's peak RSS within 15% of the plan's total"
    report["goal_met"] = all(
        r["peak_over_plan"] is not None and abs(r["peak_over_plan"] - 1) <= 0.15
        for r in report["runs"].values()
    )
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}", file=sys.stderr)


if __name__ == "__main__":
    main()
