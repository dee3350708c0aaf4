"""Reproduce the embedded tiny model with its documented command, time it, and compare.

Runs `assets.TINY_TRAINING["command"]` (toy world + `panda train ... --save-dtype fp16`) in a work
directory, each step as its own process under `/usr/bin/time -v` (wall seconds, peak RSS), then
compares the float16 checkpoint with the shipped one tensor by tensor (bit for bit where this CPU's
kernels match the ones it was trained with) and scores both with `panda eval` on the held-out split.
Records `benchmarks/results/tiny_reproduction.json` with the CPU's features and the load average:
on a shared 2-core machine the seconds depend on it. PyTorch's kernel choice can be narrowed to
stand in for another CPU (recorded in the JSON):

    python benchmarks/tiny_reproduction.py --workdir DIR [--json PATH]
    ATEN_CPU_CAPABILITY=avx2 ONEDNN_MAX_CPU_ISA=AVX2 python benchmarks/tiny_reproduction.py --workdir DIR \
        --json benchmarks/results/tiny_reproduction_avx2.json
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shlex
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "tiny_reproduction.json"
KERNEL_ENVIRONMENT = (
    "ATEN_CPU_CAPABILITY",
    "ONEDNN_MAX_CPU_ISA",
    "MKL_ENABLE_INSTRUCTIONS",
    "OMP_NUM_THREADS",
)


def timed(command: list[str], cwd: Path, log: Path) -> dict:
    """Run `command` in `cwd` under /usr/bin/time -v; its wall seconds and peak RSS (VmHWM) in MB."""
    start = time.perf_counter()
    with log.open("w") as out:
        done = subprocess.run(
            ["/usr/bin/time", "-v", *command], cwd=cwd, stdout=out, stderr=subprocess.STDOUT
        )
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        sys.exit(f"{shlex.join(command)} failed with exit {done.returncode}; see {log}")
    peak = re.search(r"Maximum resident set size \(kbytes\): (\d+)", log.read_text())
    return {"seconds": round(seconds, 1), "peak_rss_mb": round(int(peak.group(1)) / 1024) if peak else None}


def held_out(checkpoint: str, toy: Path, out: Path) -> dict:
    command = ["panda", "eval", "--checkpoint", checkpoint, "--qa", str(toy / "heldout.json")]
    command += ["--videos", str(toy / "videos"), "--json", str(out)]
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    report = json.loads(out.read_text())
    return {"questions": report["questions"], "accuracy": report["accuracy"], "per_type": report["per_type"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True, help="toy world and checkpoint go here")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()

    from safetensors.torch import load_file

    from panda_edge.assets import TINY_DIR, TINY_TRAINING
    from panda_edge.host import cpu_info, load_average

    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    toy, checkpoint = work / "toy", work / "tiny-ckpt"
    machine = {
        "cpu": cpu_info(),
        # set these to run the kernels another CPU would (ATEN_CPU_CAPABILITY=avx2 on an AVX-512 machine)
        "kernel_environment": {name: os.environ.get(name) for name in KERNEL_ENVIRONMENT},
        "load_average_before": load_average(),
    }
    # the documented command as written, run from the work directory (it writes toy/ and tiny-ckpt/)
    steps = {}
    for part in TINY_TRAINING["command"].split(" && "):
        words = shlex.split(part)
        steps[words[1]] = timed(words, work, work / f"{words[1]}.log")
    machine["load_average_after_training"] = load_average()
    made = load_file(checkpoint / "model.safetensors")
    shipped = load_file(TINY_DIR / "model.safetensors")
    equal = sum(1 for k, v in shipped.items() if k in made and made[k].equal(v))
    report = {
        "machine": machine,
        "command": TINY_TRAINING["command"],
        "steps": steps,
        "seconds": round(sum(s["seconds"] for s in steps.values()), 1),
        "budget_seconds": 1200,
        "stages": json.loads((checkpoint / "train_log.json").read_text())["stages"],
        "weights": {
            "tensors": len(shipped),
            "equal_to_shipped": equal,
            "bit_for_bit": equal == len(shipped) and made.keys() == shipped.keys(),
            "sha256": hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest(),
            "shipped_sha256": hashlib.sha256((TINY_DIR / "model.safetensors").read_bytes()).hexdigest(),
        },
        "held_out": {"reproduced": held_out(str(checkpoint), toy, work / "eval_reproduced.json")},
    }
    if not report["weights"]["bit_for_bit"]:
        report["held_out"]["shipped"] = held_out("tiny", toy, work / "eval_shipped.json")
        scores = report["held_out"]
        points = (scores["reproduced"]["accuracy"] - scores["shipped"]["accuracy"]) * 100
        scores["points_vs_shipped"] = round(points, 2)
    machine["load_average_after"] = load_average()
    print(json.dumps(report, indent=1))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(report, indent=1) + "\n")


if __name__ == "__main__":
    main()
