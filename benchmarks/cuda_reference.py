"""The PyTorch reference on an NVIDIA GPU (`--device cuda`), at the tiny and at the 7B scale.

Tiny: `panda eval --checkpoint tiny` on the held-out toy world with cpu fp32 and cuda fp32 / fp16 /
bf16, each its own process (accuracy, per-question answers, wall time). 7B: a random-weight
Video-Panda-7B in the released layout (float16 shards), loaded on the GPU as fp32 compute over the
stored float16 weights, as fp16 and as bf16; one clip's first-step logits compared with fp32's
(largest difference relative to fp32's largest logit, top-1), 16 greedy tokens each, load time, peak
GPU memory; then `panda generate --device cuda --dtype fp16` as a user runs it, with its peak RSS.

    python benchmarks/cuda_reference.py --workdir /big/disk/cuda [--json PATH]

Records `benchmarks/results/cuda_reference.json`. Needs a CUDA GPU with 16 GB, ~15 GB of disk.
"""

from __future__ import annotations

import argparse
import gc
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

RESULTS = Path(__file__).parent / "results" / "cuda_reference.json"
QUESTION = "What is moving in the video?"


def panda(args: list[str], log: Path) -> dict:
    """One `panda` command in its own process: exit status, wall seconds, its stdout parsed as JSON."""
    start = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "panda_edge.cli.main", *args], capture_output=True, text=True
    )
    log.write_text(done.stderr)
    try:
        result = json.loads(done.stdout)
    except ValueError:
        result = None
    return {"exit": done.returncode, "wall_s": round(time.perf_counter() - start, 1), "result": result}


def tiny(workdir: Path, videos: int, questions: int) -> dict:
    """The training's toy world (its held-out split), the first `questions` held-out questions."""
    from panda_edge.assets import TINY_TRAINING
    from panda_edge.toyworld.writer import generate

    data = workdir / "toyworld"
    generate(data, videos=videos, seed=TINY_TRAINING["seed"])
    runs = {}
    for device, dtype in (("cpu", "fp32"), ("cuda", "fp32"), ("cuda", "fp16"), ("cuda", "bf16")):
        name = f"{device}-{dtype}"
        args = ["eval", "--qa", str(data / "heldout.json"), "--videos", str(data / "videos")]
        args += ["--checkpoint", "tiny", "--device", device, "--dtype", dtype, "--limit", str(questions)]
        args += ["--json", "-"]
        record = panda(args, workdir / f"eval-{name}.log")
        result = record.pop("result") or {}
        record.update({k: result.get(k) for k in ("questions", "accuracy", "per_type")})
        runs[name] = record
        print(name, record, flush=True)
    return runs


def first_step(model, frames, max_new_tokens: int = 16) -> dict:
    """First-step logits (float32, on the CPU), the greedy tokens and the times of one answer."""
    import torch

    tokenizer = model.tokenizer
    torch.cuda.synchronize()
    start = time.perf_counter()
    with torch.inference_mode():
        visual = model.encode_frames(frames)
        ids, _ = tokenizer.conversation_ids([(QUESTION, None)], n_frames=len(visual))
        embeds = model.prompt_embeddings(ids, visual)
        out = model.llm(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
        logits = out.logits[0, -1].float().cpu().numpy()
    torch.cuda.synchronize()
    prefill = time.perf_counter() - start
    start = time.perf_counter()
    tokens = list(model.stream_generate(frames, QUESTION, max_new_tokens=max_new_tokens))
    torch.cuda.synchronize()
    return {
        "logits": logits,
        "tokens": tokens,
        "prompt_tokens": int(embeds.shape[1]),
        "prefill_s": round(prefill, 3),
        "answer_s": round(time.perf_counter() - start, 3),
    }


def seven_b(workdir: Path) -> dict:
    import numpy as np
    import torch

    from panda_edge.bench.e2e import bench_video
    from panda_edge.bench.release import write_release_checkpoint
    from panda_edge.config import preset
    from panda_edge.model.loading import ReferencePrecision
    from panda_edge.model.videopanda import VideoPanda
    from panda_edge.sampling import top2_margin

    checkpoint = workdir / "video-panda-7b"
    start = time.perf_counter()
    written = write_release_checkpoint(checkpoint, preset("full"))
    record: dict = {"checkpoint": {**written, "write_s": round(time.perf_counter() - start, 1)}}
    clip = workdir / "clip.mp4"
    bench_video(clip, (640, 320))
    runs, reference = {}, None
    for dtype in ("fp32", "fp16", "bf16"):
        torch.cuda.reset_peak_memory_stats()
        start = time.perf_counter()
        model = VideoPanda.from_pretrained(checkpoint, ReferencePrecision(dtype, "cuda"))
        torch.cuda.synchronize()
        load_s = time.perf_counter() - start
        frames = model.load_frames(clip)
        step = first_step(model, frames)
        logits = step.pop("logits")
        run = {"load_s": round(load_s, 1), **step}
        run["gpu_peak_gb"] = round(torch.cuda.max_memory_allocated() / 1e9, 2)
        if reference is None:
            reference = (logits, step["tokens"])
            run["top2_margin"] = float(top2_margin(logits))
            run["max_abs_logit"] = float(np.abs(logits).max())
        else:
            diff = float(np.abs(logits - reference[0]).max())
            run["max_abs_diff_vs_fp32"] = diff
            run["max_abs_rel_vs_fp32"] = diff / float(np.abs(reference[0]).max())
            run["top1_equal_fp32"] = int(np.argmax(logits)) == int(np.argmax(reference[0]))
            same = 0
            for a, b in zip(step["tokens"], reference[1], strict=False):
                if a != b:
                    break
                same += 1
            run["tokens_equal_fp32"] = same
        runs[dtype] = run
        print(dtype, run, flush=True)
        del model
        gc.collect()
        torch.cuda.empty_cache()
    record["in_process"] = runs
    args = ["generate", str(clip), QUESTION, "--checkpoint", str(checkpoint), "--device", "cuda"]
    cli = panda([*args, "--dtype", "fp16", "--max-new-tokens", "16", "--json", "-"], workdir / "gen.log")
    cli["peak_rss_mb"] = round(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024)
    record["cli_generate_fp16"] = cli
    print("cli", cli, flush=True)
    return record


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    parser.add_argument("--workdir", type=Path, required=True)
    parser.add_argument("--videos", type=int, default=1200, help="toy-world videos (the training's)")
    parser.add_argument("--questions", type=int, default=200, help="held-out questions per eval")
    parser.add_argument("--steps", default="tiny,7b")
    parser.add_argument("--json", type=Path, default=RESULTS)
    args = parser.parse_args()
    import torch

    from panda_edge.host import cpu_info

    steps = args.steps.split(",")
    args.workdir.mkdir(parents=True, exist_ok=True)
    report: dict = {
        "gpu": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
        "torch": torch.__version__,
        "cpu": cpu_info(),
    }
    try:
        if "tiny" in steps:
            report["tiny_eval"] = tiny(args.workdir, args.videos, args.questions)
        if "7b" in steps:
            report["video_panda_7b"] = seven_b(args.workdir)
    finally:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=1, default=str) + "\n")
        shutil.rmtree(args.workdir / "video-panda-7b", ignore_errors=True)


if __name__ == "__main__":
    main()
