"""The user's journey on a Video-Panda-7B in the released layout, with wall time and peak RSS per step.

Writes a random-weight Video-Panda-7B as the release ships it (official key names, float16 safetensors
shards with an index, `torch_dtype: float16`, the official tower name and no preprocessor config, a
32,000-piece SentencePiece tokenizer), then runs each `panda` command a user would, each in its own
process under `/usr/bin/time -v` (peak RSS = that process's VmHWM): info, export --target all
(q4_k_m, then q8_0 and f16 GGUFs), calibrate, run, chat with and without --cache, parity, plan.
Records `benchmarks/results/scale_7b.json`. Needs about 55 GB of disk in --workdir (removed after
unless --keep) and about 2 hours on 2 cores.

    python benchmarks/scale_7b.py --workdir /big/disk/scale7b [--keep] [--steps info,export,...]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import time
from pathlib import Path

from panda_edge.bench.process import timed_panda
from panda_edge.bench.release import write_release_checkpoint
from panda_edge.config import preset

RESULTS = Path(__file__).parent / "results" / "scale_7b.json"
QUESTIONS = ("What is moving in the video?", "Which direction does it move?")


def write_clips(directory: Path) -> Path:
    """Four 8-second clips (2:1, 16:9, 4:3, square) and a QA file about them."""
    from panda_edge.bench.e2e import bench_video

    videos = directory / "videos"
    videos.mkdir(parents=True, exist_ok=True)
    qa = []
    for i, size in enumerate(((640, 320), (640, 360), (640, 480), (480, 480))):
        name = f"clip{i}.mp4"
        bench_video(videos / name, size)
        qa.append({"id": str(i), "video": name, "question": QUESTIONS[i % 2], "answer": "a square"})
    (directory / "qa.json").write_text(json.dumps(qa, indent=1))
    return directory / "qa.json"


def read_json(path: Path) -> object:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def machine() -> dict:
    """The CPU's name and the features that change INT8 and llama.cpp speeds a lot."""
    from panda_edge.host import cpu_info

    name, features = cpu_info()
    return {"cpu": name, "cores": os.cpu_count(), "features": features}


STEPS = ("info", "export", "calibrate", "run", "chat", "parity", "plan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", type=Path, required=True, help="needs about 55 GB of free disk")
    parser.add_argument(
        "--steps", default=",".join(STEPS), help="comma-separated subset of " + ",".join(STEPS)
    )
    parser.add_argument("--keep", action="store_true", help="keep the checkpoint and bundle")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    steps = args.steps.split(",")
    work = args.workdir
    work.mkdir(parents=True, exist_ok=True)
    ckpt, bundle, logs = work / "Video-Panda-7B", work / "bundle", work / "logs"
    logs.mkdir(exist_ok=True)
    report = read_json(args.json) if args.json.is_file() else None
    report = report if isinstance(report, dict) else {}
    report.setdefault("steps", {})
    report["machine"] = machine()
    if not (ckpt / "model.safetensors.index.json").is_file():
        start = time.perf_counter()
        info = write_release_checkpoint(ckpt, preset("full"))
        report["checkpoint"] = {**info, "write_s": round(time.perf_counter() - start, 1)}
    qa = write_clips(work)
    clip = work / "videos" / "clip0.mp4"
    s = report["steps"]

    def save() -> None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2) + "\n")

    def step(name: str, argv: list[str], stdin: str | None = None, json_path: Path | None = None) -> None:
        record = timed_panda(name, argv, logs / f"{name}.log", stdin)
        if json_path is not None:
            record["result"] = read_json(json_path)
        s[name] = record
        save()

    if "info" in steps:
        step("info", ["info", str(ckpt), "--json", "-"], json_path=logs / "info.out")
    if "export" in steps:
        step(
            "export_all_q4_k_m",
            [
                "export",
                "--target",
                "all",
                "--checkpoint",
                str(ckpt),
                "--out",
                str(bundle),
                "--gguf-type",
                "q4_k_m",
            ],
        )
        for t in ("q8_0", "f16"):
            step(
                f"export_gguf_{t}",
                [
                    "export",
                    "--target",
                    "gguf",
                    "--checkpoint",
                    str(ckpt),
                    "--out",
                    str(bundle),
                    "--gguf-type",
                    t,
                ],
            )
    if "calibrate" in steps:
        step(
            "calibrate",
            [
                "calibrate",
                "--bundle",
                str(bundle),
                "--videos",
                str(work / "videos"),
                "--samples",
                "3",
                "--holdout",
                "1",
                "--json",
                str(logs / "calibrate.json"),
            ],
            json_path=logs / "calibrate.json",
        )
    if "run" in steps:
        step(
            "run_q4_k_m",
            [
                "run",
                "--bundle",
                str(bundle),
                str(clip),
                QUESTIONS[0],
                "--gguf-type",
                "q4_k_m",
                "--max-new-tokens",
                "16",
                "--json",
                str(logs / "run.json"),
            ],
            json_path=logs / "run.json",
        )
    if "chat" in steps:
        cache = work / "prefix-cache"
        shutil.rmtree(cache, ignore_errors=True)
        both = "\n".join(QUESTIONS) + "\n"
        common = [
            "chat",
            "--bundle",
            str(bundle),
            str(clip),
            "--gguf-type",
            "q4_k_m",
            "--max-new-tokens",
            "16",
        ]
        step("chat_no_cache", [*common, "--json", str(logs / "chat.json")], both, logs / "chat.json")
        step(
            "chat_cache_cold",
            [*common, "--cache", str(cache), "--json", str(logs / "chat_cold.json")],
            both,
            logs / "chat_cold.json",
        )
        step(
            "chat_cache_warm",
            [*common, "--cache", str(cache), "--json", str(logs / "chat_warm.json")],
            both,
            logs / "chat_warm.json",
        )
    if "parity" in steps:
        step(
            "parity",
            [
                "parity",
                "--checkpoint",
                str(ckpt),
                "--bundle",
                str(bundle),
                str(clip),
                "--levels",
                "stab_fp32,stab_int8,tokenizer,llm,e2e",
                "--qa",
                str(qa),
                "--e2e-videos",
                "2",
                "--json",
                str(logs / "parity.json"),
            ],
            json_path=logs / "parity.json",
        )
    if "plan" in steps:
        step(
            "plan_cpu",
            ["plan", "--device", "cpu", "--bundle", str(bundle), "--json", str(logs / "plan.json")],
            json_path=logs / "plan.json",
        )
    report["summary"] = summary(s)
    save()
    if not args.keep:
        shutil.rmtree(ckpt, ignore_errors=True)
        shutil.rmtree(bundle, ignore_errors=True)
        shutil.rmtree(work / "prefix-cache", ignore_errors=True)


def summary(s: dict) -> dict:
    """The issue's checks from the steps' records: plan vs measured RSS, the cache's cost."""
    out: dict = {}
    try:
        plan = next(o for o in s["plan_cpu"]["result"]["options"] if o["gguf_type"] == "q4_k_m")
        predicted = plan["total_bytes"] / 2**20
        out["plan_q4_k_m_mb"] = round(predicted)
        out["run_peak_over_plan"] = round(s["run_q4_k_m"]["peak_rss_mb"] / predicted, 3)
    except (KeyError, StopIteration, TypeError):
        pass
    try:
        cold, plain = s["chat_cache_cold"], s["chat_no_cache"]
        out["cache_rss_over_no_cache"] = round(cold["peak_rss_mb"] / plain["peak_rss_mb"], 4)
        ttft = [r["result"]["turns"][0]["ttft_ms"] for r in (cold, plain)]
        out["cache_cold_ttft_over_no_cache"] = round(ttft[0] / ttft[1], 4)
        out["warm_cache_first_ttft_ms"] = s["chat_cache_warm"]["result"]["turns"][0]["ttft_ms"]
    except (KeyError, IndexError, TypeError, ZeroDivisionError):
        pass
    try:
        out["parity_peak_rss_mb"] = s["parity"]["peak_rss_mb"]
        out["parity_passed"] = s["parity"]["exit"] == 0
    except KeyError:
        pass
    return out


if __name__ == "__main__":
    main()
