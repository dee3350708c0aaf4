"""`panda bench all`: vision, llm and e2e side by side in one run, with the machine's limits.

Each result gets a roofline line: decode against the memory-bandwidth bound (every weight is read
once per token), prefill and vision against the measured fp32 GEMM throughput (FLOPs counted by
PyTorch for the vision part, 2 x parameters per token for the LLM), so a reader sees how far each
number is from what this machine could do.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from panda_edge.timing import quotient

VISUAL_TOKENS = 2184  # a full-size 8-frame video (docs/design.md §2)
TEXT_TOKENS = 64  # system prompt and question around them
ANSWER_TOKENS = 32


def bench_all(
    repeat: int = 3,
    threads: int = 2,
    e2e_model: str = "bench",
    on_step: Callable[[str], None] | None = None,
    plot_path: str | Path | None = None,
) -> dict[str, Any]:
    """Every benchmark in one run with the machine's limits, ratios, rooflines and goals; with
    `plot_path`, the chart too (matplotlib, checked before anything runs)."""
    from panda_edge.bench.e2e import MODELS, bench_e2e
    from panda_edge.bench.gguf_memory import bench_gguf_memory
    from panda_edge.bench.llm import BENCH_LLM, bench_llm
    from panda_edge.bench.machine import limits, vision_gflop_per_video
    from panda_edge.bench.vision import bench_vision, machine_info
    from panda_edge.errors import PandaError
    from panda_edge.optional import llama_cpp, require

    if e2e_model not in MODELS:
        raise PandaError(f"unknown e2e model '{e2e_model}'; choose one of: {', '.join(MODELS)}")
    llama_cpp()
    if plot_path is not None:
        require("matplotlib", extra="bench")

    step = on_step or (lambda message: None)
    started = time.time()
    step("measuring the machine's limits (memory bandwidth, fp32 GEMM)")
    machine = {**machine_info(), **limits(threads), "load_average_before": list(os.getloadavg())}
    step("counting the vision part's FLOPs")
    vision_gflop = vision_gflop_per_video("full")
    step("vision: full-size STAB + projector")
    vision = bench_vision("full", repeat=max(repeat, 3), on_step=step)
    step("llm: the 0.54B bench Llama")
    llm = bench_llm(BENCH_LLM, repeat=repeat, threads=threads, on_step=step)
    step(f"e2e: {e2e_model} model")
    e2e = bench_e2e(e2e_model, repeat=repeat, threads=threads, on_step=step)
    step("memory: f16 GGUF conversion of a 3-layer full-width checkpoint")
    gguf_memory = bench_gguf_memory()
    machine["load_average_after"] = list(os.getloadavg())
    result = {
        "vision": vision["vision"],
        "llm": llm["llm"],
        "e2e": e2e["e2e"],
        "gguf_memory": gguf_memory,
        "ratios": {
            "vision_vs_torch": {
                name: quotient(vision["vision"]["torch"]["median_ms"], r["median_ms"])
                for name, r in vision["vision"].items()
            },
            "llm_vs_transformers": llm["ratios_vs_transformers"],
            "e2e": e2e["ratios"],
        },
        "roofline": roofline(vision, llm, machine, vision_gflop),
        "stages": stages(vision["vision"], llm["llm"]),
        "details": {"vision": _drop(vision, "vision"), "llm": _drop(llm, "llm"), "e2e": _drop(e2e, "e2e")},
        "machine": machine,
        "threads": threads,
        "repeat": repeat,
        "seconds": round(time.time() - started, 1),
    }
    result["goals"] = goals(result)
    if plot_path is not None:
        plot(result, str(plot_path))
    return result


def _drop(data: dict[str, Any], key: str) -> dict[str, Any]:
    return {k: v for k, v in data.items() if k != key}


def roofline(
    vision: dict[str, Any], llm: dict[str, Any], machine: dict[str, Any], gflop: float
) -> dict[str, Any]:
    bandwidth, gemm = machine["memory_bandwidth_gbs"], machine["fp32_matmul_gflops"]
    params = llm["model"]["parameters"]
    weight_bytes = {"transformers": params * 4}
    weight_bytes.update({name: r["gguf_bytes"] for name, r in llm["llm"].items() if "gguf_bytes" in r})
    # Unrounded bounds for the fractions; only what the report shows is rounded.
    bound_ms = quotient(gflop * 1e3, gemm, digits=None)
    prefill_bound = quotient(None if gemm is None else gemm * 1e9, 2 * params, digits=None)
    decode_bound = {
        name: quotient(None if bandwidth is None else bandwidth * 1e9, size, digits=None)
        for name, size in weight_bytes.items()
    }
    return {
        "vision": {
            "gflop_per_video": gflop,
            "fp32_gemm_bound_ms": quotient(bound_ms, 1),
            "fraction_of_bound": {
                name: quotient(bound_ms, r["median_ms"]) for name, r in vision["vision"].items()
            },
            "note": "int8 backends can beat the fp32 GEMM bound; their fraction is against fp32 peak",
        },
        "decode": {
            name: {
                "bandwidth_bound_tok_s": quotient(decode_bound[name], 1),
                "measured_tok_s": r["decode_tok_s"],
                "fraction_of_bound": quotient(r["decode_tok_s"], decode_bound[name]),
            }
            for name, r in llm["llm"].items()
        },
        "prefill": {
            "fp32_gemm_bound_tok_s": quotient(prefill_bound, 1),
            "fraction_of_bound": {
                name: quotient(r["prefill_tok_s"], prefill_bound) for name, r in llm["llm"].items()
            },
        },
    }


def stages(vision: dict[str, Any], llm: dict[str, Any]) -> dict[str, dict[str, float | None]]:
    """Seconds per stage of one question about a full-size video, assembled from the component
    benchmarks: vision, prefill of the visual + text tokens, decode of a 32-token answer."""
    prompt = VISUAL_TOKENS + TEXT_TOKENS

    def stack(vision_name: str, llm_name: str) -> dict[str, float | None]:
        return {
            "vision_s": quotient(vision[vision_name]["median_ms"], 1e3),
            "prefill_s": quotient(prompt, llm[llm_name]["prefill_tok_s"]),
            "decode_s": quotient(ANSWER_TOKENS, llm[llm_name]["decode_tok_s"]),
        }

    stacks = {"PyTorch (torch + transformers)": stack("torch", "transformers")}
    for vision_name in (n for n in vision if n != "torch"):
        for llm_name in (n for n in llm if n != "transformers"):
            stacks[f"{vision_name} + {llm_name}"] = stack(vision_name, llm_name)
    return stacks


def goals(result: dict[str, Any]) -> dict[str, Any]:
    """docs/design.md §6 (and the GGUF conversion's memory limit), met or the gap stated."""
    vision = result["ratios"]["vision_vs_torch"]
    int8 = max((r for name, r in vision.items() if "int8" in name and r is not None), default=None)
    decode = result["ratios"]["llm_vs_transformers"]
    best_decode = max((r["decode_x"] for r in decode.values() if r["decode_x"] is not None), default=None)
    q8 = decode.get("llama.cpp-q8_0", {}).get("decode_x")
    followup = result["ratios"]["e2e"]["runtime_followup_vs_first_ttft"]
    rss = result.get("gguf_memory", {}).get("ratio_peak_rss_to_checkpoint")  # of the checkpoint's size
    return {
        "vision_int8_3x_torch": {"measured_x": int8, "met": int8 is not None and int8 >= 3},
        "llm_decode_3x_transformers": {
            "q8_0_x": q8,
            "best_x": best_decode,
            "met": q8 is not None and q8 >= 3,
        },
        "followup_ttft_at_most_10pct": {
            "measured": followup,
            "met": followup is not None and followup <= 0.10,
        },
        "gguf_conversion_peak_rss_below_25pct": {"measured": rss, "met": rss is not None and rss < 0.25},
    }


def plot(result: dict[str, Any], path: str) -> None:
    """Latency per stage per backend (stacked), and time to first token first vs follow-up."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from panda_edge.fileio import atomic_path

    stacks = result["stages"]
    names = list(stacks)
    fig, (left, right) = plt.subplots(1, 2, figsize=(14, 5.5), gridspec_kw={"width_ratios": [3, 1.2]})
    bottom = [0.0] * len(names)
    for stage, color in (("vision_s", "#4c72b0"), ("prefill_s", "#dd8452"), ("decode_s", "#55a868")):
        values = [stacks[n][stage] for n in names]
        left.barh(names, values, left=bottom, color=color, label=stage.removesuffix("_s"))
        bottom = [b + v for b, v in zip(bottom, values, strict=True)]
    left.invert_yaxis()
    left.set_xlabel("seconds for one question (full-size STAB, 2,248-token prompt, 32-token answer)")
    left.set_title("latency per stage per backend (component medians)")
    left.legend(loc="lower right")
    e2e = result["e2e"]
    engines = list(e2e)
    x = range(len(engines))
    right.bar(
        [i - 0.2 for i in x], [e2e[e]["ttft_first_ms"] / 1e3 for e in engines], 0.4, label="first question"
    )
    right.bar(
        [i + 0.2 for i in x], [e2e[e]["ttft_followup_ms"] / 1e3 for e in engines], 0.4, label="follow-up"
    )
    right.set_xticks(list(x), engines)
    right.set_ylabel("time to first token (s)")
    right.set_title("e2e, measured")
    right.legend()
    cpu = result["machine"].get("cpu", "")
    fig.suptitle(f"panda-edge benchmarks on {cpu}, {result['threads']} threads")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
