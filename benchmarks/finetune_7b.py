"""One LoRA step of `panda finetune` on a Video-Panda-7B in the released layout, on CPU: peak RSS and time.

Writes a random-weight Video-Panda-7B as the release ships it (float16 shards, bench/release.py),
one 8-second 2:1 clip with one question (one optimizer step at --batch-size 1), then runs
`panda finetune --method lora` in its own process under `/usr/bin/time -v` (peak RSS = its VmHWM) for
each --dtype asked. Records the memory check's estimate by part, the step's own time (`step_seconds`),
the whole command's wall time (load 13.5 GB, the step, merge, write 13.5 GB) and peak RSS, or the
memory check's refusal line, in `benchmarks/results/finetune_7b.json`. Needs about 30 GB of disk in
--workdir (removed after unless --keep).

    python benchmarks/finetune_7b.py --workdir /big/disk/ft7b [--dtypes bf16,fp32] [--keep]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from panda_edge.bench.process import timed_panda
from panda_edge.bench.release import write_release_checkpoint
from panda_edge.config import preset

RESULTS = Path(__file__).parent / "results" / "finetune_7b.json"


def write_data(directory: Path) -> Path:
    """One 2:1 clip and train.json with one Video-ChatGPT conversation about it."""
    from panda_edge.bench.e2e import bench_video

    (directory / "videos").mkdir(parents=True, exist_ok=True)
    bench_video(directory / "videos" / "clip.mp4", (640, 320))
    entry = {
        "video": "clip.mp4",
        "conversations": [
            {"from": "human", "value": "<video>\nWhich direction does the square move?"},
            {"from": "gpt", "value": "The square moves to the right."},
        ],
    }
    (directory / "train.json").write_text(json.dumps([entry], indent=1))
    return directory


def machine() -> dict:
    import os

    from panda_edge.host import cpu_info
    from panda_edge.memory import available_bytes

    name, features = cpu_info()
    total = int(Path("/proc/meminfo").read_text().split()[1]) * 1024
    return {
        "cpu": name,
        "cores": os.cpu_count(),
        "features": features,
        "memory_gb": round(total / 1e9, 1),
        "available_gb_at_start": round(available_bytes() / 1e9, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="needs about 30 GB of free disk")
    parser.add_argument("--dtypes", default="bf16,fp32", help="compute dtypes to run, comma-separated")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint and outputs")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    ckpt, data, logs = work / "Video-Panda-7B", work / "data", work / "logs"
    logs.mkdir(exist_ok=True)
    # runs of other dtypes already recorded stay (run one dtype again with --dtypes)
    previous = json.loads(args.json.read_text()) if args.json.is_file() else {}
    report: dict = {**previous, "machine": machine(), "runs": previous.get("runs", {})}
    try:
        if not (ckpt / "model.safetensors.index.json").is_file():
            start = time.perf_counter()
            info = write_release_checkpoint(ckpt, preset("full"))
            report["checkpoint"] = {**info, "write_s": round(time.perf_counter() - start, 1)}
        write_data(data)
        for dtype in args.dtypes.split(","):
            out = work / f"out-{dtype}"
            shutil.rmtree(out, ignore_errors=True)
            result = logs / f"finetune_{dtype}.json"
            argv = ["finetune", "--checkpoint", str(ckpt), "--data", str(data), "--out", str(out)]
            argv += ["--dtype", dtype, "--batch-size", "1", "--epochs", "1", "--threads", str(args.threads)]
            record = timed_panda(f"finetune_{dtype}", [*argv, "--json", str(result)], logs / f"{dtype}.log")
            if result.is_file():
                done = json.loads(result.read_text())
                log = json.loads((out / "finetune_log.json").read_text())
                record["step_seconds"] = done["step_seconds"]
                record["loss"] = done["losses"]
                record["trainable_parameters"] = done["trainable_parameters"]
                record["estimate_gb"] = log["memory_gb"]
                record["estimate_total_gb"] = round(sum(log["memory_gb"].values()), 2)
            else:
                lines = (logs / f"{dtype}.log").read_text(errors="replace").splitlines()
                record["error"] = next((line for line in lines if line.startswith("error:")), None)
                record["log_tail"] = [line.strip() for line in lines if line.strip()][:8]
            report["runs"][dtype] = record
            shutil.rmtree(out, ignore_errors=True)
            args.json.parent.mkdir(parents=True, exist_ok=True)
            args.json.write_text(json.dumps(report, indent=2) + "\n")
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
