"""End-to-end speed: a first question and a follow-up about one video, PyTorch reference vs runtime.

Time to first token (TTFT) for the first question includes decoding the video, the vision part and
the prefill of the video prefix; a follow-up's includes only its own text (the runtime keeps the
prefix in llama.cpp's KV cache; the reference, like the official code, recomputes everything).
Each engine runs in its own process, so its peak RSS is its own. Medians after one warm-up.

Models: `tiny` (the embedded trained model) or `bench` (the full-size STAB at 448 px, 2,184 visual
tokens, feeding the 0.54B random Llama of the llm benchmark).
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from panda_edge.backends import RUNTIME_GGUF_TYPE
from panda_edge.bench.machine import peak_rss_mb
from panda_edge.errors import PandaError
from panda_edge.timing import BELOW_RESOLUTION, measurable, median_s, quotient, rate, significant

QUESTIONS = ("What color is the ring?", "Which direction does the square move?")
MODELS = ("tiny", "bench")
ENGINES = ("torch", "runtime")


def check_model(model: str) -> None:
    """PandaError unless `model` is one of MODELS: bad input fails before anything is built."""
    if model not in MODELS:
        raise PandaError(f"unknown model '{model}'; choose one of: {', '.join(MODELS)}")


def build_bench_checkpoint(directory: Path, seed: int = 0) -> Path:
    """Full-size STAB + projector and the llm benchmark's Llama, random weights, saved in fp16."""
    import torch

    from panda_edge.bench.llm import BENCH_LLM, synthetic_tokenizer
    from panda_edge.config import ModelConfig, VisionConfig
    from panda_edge.model.videopanda import VideoPanda
    from panda_edge.prompt import PromptTokenizer

    directory.mkdir(parents=True, exist_ok=True)
    synthetic_tokenizer(directory / "tokenizer.model", BENCH_LLM.vocab_size)
    torch.manual_seed(seed)
    model = VideoPanda(ModelConfig(vision=VisionConfig(), llm=BENCH_LLM, name="bench"))
    model.tokenizer = PromptTokenizer(directory / "tokenizer.model")
    model.save_pretrained(directory, dtype=torch.float16)
    return directory


def bench_video(path: Path, size: tuple[int, int], seconds: int = 8) -> Path:
    """A clip of moving squares, long enough for all 8 sampled frames to be distinct."""
    import numpy as np

    from panda_edge.video.encode import write_video

    width, height = size
    rng = np.random.default_rng(0)
    frames = []
    for i in range(seconds * 4):
        frame = np.full((height, width, 3), (122, 116, 104), dtype=np.uint8)
        x = int(i * (width - height // 4) / (seconds * 4))
        frame[height // 3 : height // 3 + height // 4, x : x + height // 4] = rng.integers(0, 255, 3)
        frames.append(frame)
    write_video(path, frames, fps=4)
    return path


def bench_e2e(
    model: str = "tiny",
    repeat: int = 3,
    threads: int = 2,
    gguf_type: str = RUNTIME_GGUF_TYPE,
    max_new_tokens: int = 32,
    dtype: str = "fp32",
    device: str = "cpu",
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Time to first token (first question and follow-up), decode tokens/s and peak RSS of the PyTorch
    reference and the runtime on `model` (tiny, or bench: full-size STAB + 0.54B random Llama), each in
    its own process."""
    from panda_edge.export.llm_gguf.export_gguf import export_gguf, get_gguf_type
    from panda_edge.export.stab_onnx.export_onnx import export_bundle
    from panda_edge.model.loading import ReferencePrecision
    from panda_edge.optional import llama_cpp

    check_model(model)
    get_gguf_type(gguf_type)
    llama_cpp()
    ReferencePrecision(dtype, device)
    step = on_step or (lambda message: None)
    with tempfile.TemporaryDirectory(prefix="panda-bench-e2e-") as tmp:
        root = Path(tmp)
        if model == "bench":
            step("building the bench model (full-size STAB + 0.54B Llama, random weights)")
            checkpoint = str(build_bench_checkpoint(root / "ckpt"))
            size = (640, 480)
        else:
            checkpoint, size = "tiny", (160, 120)
        step(f"exporting the bundle (ONNX fp32 + {gguf_type} GGUF)")
        export_bundle(checkpoint, root / "bundle")
        export_gguf(checkpoint, root / "bundle", gguf_type)
        video = bench_video(root / "clip.mp4", size)
        job = {
            "checkpoint": checkpoint,
            "bundle": str(root / "bundle"),
            "video": str(video),
            "gguf_type": gguf_type,
            "repeat": repeat,
            "threads": threads,
            "max_new_tokens": max_new_tokens,
            "reference_dtype": dtype,
            "reference_device": device,
        }
        results = {}
        for engine in ENGINES:
            step(f"timing the {engine} ({repeat} runs after a warm-up, own process)")
            results[engine] = _run_worker({**job, "engine": engine})
    torch_r, runtime_r = results["torch"], results["runtime"]
    return {
        "e2e": results,
        "ratios": {
            "runtime_followup_vs_first_ttft": quotient(
                runtime_r["ttft_followup_ms"], runtime_r["ttft_first_ms"], 4
            ),
            "runtime_vs_torch_ttft_first_x": quotient(torch_r["ttft_first_ms"], runtime_r["ttft_first_ms"]),
            "runtime_vs_torch_ttft_followup_x": quotient(
                torch_r["ttft_followup_ms"], runtime_r["ttft_followup_ms"]
            ),
            "runtime_vs_torch_decode_x": quotient(runtime_r["decode_tok_s"], torch_r["decode_tok_s"]),
        },
        "goal": "a follow-up's TTFT <= 10% of the first question's (docs/design.md §6)",
        "model": model,
        "questions": list(QUESTIONS),
        **{k: v for k, v in job.items() if k not in ("bundle", "video", "checkpoint")},
        "runtime_config": f"ONNX Runtime fp32 vision + llama.cpp {gguf_type}, KV cache f16",
        "method": "median of `repeat` runs after one warm-up; each engine in its own process",
    }


def _run_worker(job: dict[str, Any]) -> dict[str, Any]:
    done = subprocess.run(
        [sys.executable, "-m", "panda_edge.bench.e2e", json.dumps(job)], capture_output=True, text=True
    )
    if done.returncode != 0:
        raise RuntimeError(f"the {job['engine']} benchmark process failed:\n{done.stderr[-2000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# --- inside the worker process ------------------------------------------------------------------------


def _measure(job: dict[str, Any]) -> dict[str, Any]:
    runs = [_runtime_run, _torch_run][job["engine"] == "torch"](job)
    return summarize(runs[1:], peak_rss_mb())  # the first is the warm-up


def summarize(timed: list[dict[str, Any]], peak_rss: float) -> dict[str, Any]:
    """The report for one engine from its runs' unrounded seconds. A time too short to measure is
    None with the reason (decode: an answer of one token has no decode time), never 0 or a division."""
    decode = [r["decode_tok_s"] for r in timed if r["decode_tok_s"] is not None]
    first = median_s([r["first"] for r in timed])
    followup = median_s([r["followup"] for r in timed])
    report: dict[str, Any] = {
        "ttft_first_ms": significant(first * 1e3) if measurable(first) else None,
        "ttft_followup_ms": significant(followup * 1e3) if measurable(followup) else None,
        "decode_tok_s": significant(statistics.median(decode)) if decode else None,
        "peak_rss_mb": round(peak_rss, 1),
        "tokens": [r["tokens"] for r in timed],
        "runs_ttft_first_ms": [significant(r["first"] * 1e3) for r in timed],
        "runs_ttft_followup_ms": [significant(r["followup"] * 1e3) for r in timed],
    }
    unmeasured = {k: BELOW_RESOLUTION for k in ("ttft_first_ms", "ttft_followup_ms") if report[k] is None}
    if report["decode_tok_s"] is None:
        unmeasured["decode_tok_s"] = "no run decoded more than one token in a measurable time"
    if unmeasured:
        report["unmeasured"] = unmeasured
    return report


def _runtime_run(job: dict[str, Any]) -> list[dict[str, Any]]:
    from panda_edge.runtime.options import RuntimeOptions

    runs = []
    options = RuntimeOptions(gguf_type=job["gguf_type"], threads=job["threads"])
    with options.open(job["bundle"]) as runtime:
        for _ in range(job["repeat"] + 1):
            runtime.prefix.forget()
            chat = runtime.chat(job["video"])
            first = chat.ask(QUESTIONS[0], job["max_new_tokens"])
            followup = chat.ask(QUESTIONS[1], job["max_new_tokens"])
            runs.append(
                {
                    "first": first.ttft_s,
                    "followup": followup.ttft_s,
                    "decode_tok_s": first.decode_tok_s,
                    "tokens": len(first.tokens),
                }
            )
    return runs


def _torch_run(job: dict[str, Any]) -> list[dict[str, Any]]:
    import torch

    from panda_edge.model.loading import ReferencePrecision
    from panda_edge.model.videopanda import VideoPanda

    torch.set_num_threads(job["threads"])
    precision = ReferencePrecision(job["reference_dtype"], job["reference_device"])
    model = VideoPanda.from_pretrained(job["checkpoint"], precision)
    runs = []
    for _ in range(job["repeat"] + 1):
        first, tokens, decode_s = _timed_stream(
            model.stream_generate(job["video"], QUESTIONS[0], job["max_new_tokens"])
        )
        answer = model.tokenizer.decode(tokens).strip()
        followup, _, _ = _timed_stream(
            model.stream_generate(
                job["video"], QUESTIONS[1], job["max_new_tokens"], history=[(QUESTIONS[0], answer)]
            )
        )
        decode_tok_s = rate(len(tokens) - 1, decode_s) if len(tokens) > 1 else None
        runs.append(
            {"first": first, "followup": followup, "decode_tok_s": decode_tok_s, "tokens": len(tokens)}
        )
    return runs


def _timed_stream(tokens) -> tuple[float, list[int], float]:
    """(seconds to the first token, the tokens, seconds from the first token to the last)."""
    start = time.perf_counter()
    out, first_at = [], None
    for token in tokens:
        first_at = first_at or time.perf_counter()
        out.append(token)
    end = time.perf_counter()
    first_at = first_at or end
    return first_at - start, out, end - first_at


if __name__ == "__main__":
    print(json.dumps(_measure(json.loads(sys.argv[1]))))
