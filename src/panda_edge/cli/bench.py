"""`panda bench`: speed measurements, recorded as JSON (never asserted in tests)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from panda_edge.backends import DEFAULT_EVERY_S, DEFAULT_TRT_PROFILE, DEFAULT_WINDOW_S, RUNTIME_GGUF_TYPE
from panda_edge.calibration.ranges import DEFAULT_METHOD
from panda_edge.cli._common import (
    ReferenceDevice,
    ReferenceDtype,
    Threads,
    emit_result,
    handle_errors,
    json_to_stdout,
    number,
    out,
    step_printer,
)
from panda_edge.host import default_threads

app = typer.Typer(
    help="Measure speed: vision (PyTorch vs ONNX Runtime fp32 / INT8), llm (transformers vs llama.cpp), e2e "
    "(reference vs runtime: time to first token, follow-ups, decode, memory), all (everything + chart).",
    no_args_is_help=True,
)


BenchModelOpt = Annotated[
    str, typer.Option(help="tiny (the embedded model) or bench (full-size STAB + 0.54B random Llama).")
]


@app.command()
@handle_errors
def vision(
    preset: Annotated[str, typer.Option(help="Model size: full (448 px, width 1024) or tiny.")] = "full",
    repeat: Annotated[int, typer.Option(min=1, help="Timed runs per engine, after one warm-up run.")] = 5,
    trt_profile: Annotated[str, typer.Option(help="Export profile of the ONNX graph.")] = DEFAULT_TRT_PROFILE,
    int8: Annotated[
        bool, typer.Option("--int8/--no-int8", help="Also calibrate and time the INT8 graphs.")
    ] = True,
    calibration_videos: Annotated[
        int, typer.Option(min=1, help="Clips to calibrate INT8 on (not the timed one).")
    ] = 4,
    method: Annotated[
        str, typer.Option(help="INT8 calibration: entropy, minmax or percentile.")
    ] = DEFAULT_METHOD,
    threads: Threads = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the result as JSON ('-': stdout).")
    ] = None,
) -> None:
    """PyTorch eager fp32 vs ONNX Runtime fp32 and INT8 (CPU form, TensorRT form) on STAB + projector
    with random weights, one video, interleaved rounds; INT8 tokens compared with PyTorch's."""
    from panda_edge.bench.vision import bench_vision

    quiet = json_to_stdout(json_out)
    result = bench_vision(
        preset,
        repeat,
        trt_profile,
        on_step=step_printer(quiet),
        int8=int8,
        calibration_videos=calibration_videos,
        method=method,
        threads=threads,
    )
    if emit_result(result, json_out):
        return
    for name, e in result["vision"].items():
        out.print(
            f"{name:>17}: median {e['median_ms']:.1f} ms (min {e['min_ms']:.1f}, max {e['max_ms']:.1f})"
        )
    out.print(f"ONNX Runtime fp32 vs PyTorch: {number(result['ratio_ort_vs_torch'], '.2f')}x")
    if int8:
        parity = result["int8"]["stab_int8"]["cpu"]
        out.print(
            f"ONNX Runtime INT8 vs PyTorch: {number(result['ratio_ort_int8_vs_torch'], '.2f')}x "
            f"(vs ONNX Runtime fp32 {number(result['ratio_ort_int8_vs_ort'], '.2f')}x); "
            "INT8 tokens vs PyTorch: "
            f"cosine mean {parity['cosine_mean']:.5f}, min {parity['cosine_min']:.5f}; "
            f"float groups: {', '.join(result['int8']['float_groups']) or 'none'}"
        )


@app.command()
@handle_errors
def llm(
    repeat: Annotated[int, typer.Option(min=1, help="Timed runs per engine, after one warm-up run.")] = 3,
    layers: Annotated[int, typer.Option(min=1, help="Llama layers (hidden 2048, FFN 5632).")] = 8,
    threads: Threads = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the result as JSON ('-': stdout).")
    ] = None,
) -> None:
    """transformers eager fp32 vs llama.cpp f16 / q8_0 / q4_k_m on one random Llama: prefill and decode
    tokens/s (prompt 128, 64 greedy tokens). Needs llama-cpp-python (panda-edge[llama])."""
    from dataclasses import replace

    from panda_edge.bench.llm import BENCH_LLM, bench_llm

    quiet = json_to_stdout(json_out)
    threads = default_threads(threads)  # the same count for every engine compared
    result = bench_llm(
        replace(BENCH_LLM, num_hidden_layers=layers),
        repeat=repeat,
        threads=threads,
        on_step=step_printer(quiet),
    )
    if emit_result(result, json_out):
        return
    for name, r in result["llm"].items():
        prefill, decode = r["prefill_tok_s"], r["decode_tok_s"]
        out.print(
            f"{name:>18}: prefill {number(prefill, '8.1f')} tok/s, decode {number(decode, '6.1f')} tok/s"
        )


@app.command()
@handle_errors
def e2e(
    model: BenchModelOpt = "tiny",
    repeat: Annotated[int, typer.Option(min=1, help="Timed runs per engine, after one warm-up run.")] = 3,
    threads: Threads = None,
    gguf_type: Annotated[str, typer.Option(help="The runtime's GGUF type.")] = RUNTIME_GGUF_TYPE,
    max_new_tokens: Annotated[int, typer.Option(min=1, help="Longest answer.")] = 32,
    dtype: ReferenceDtype = "fp32",
    device: ReferenceDevice = "cpu",
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the result as JSON ('-': stdout).")
    ] = None,
) -> None:
    """Time to first token of a first question and of a follow-up, decode tokens/s and peak RSS:
    the PyTorch reference vs the runtime (ONNX Runtime + llama.cpp), each in its own process."""
    from panda_edge.bench.e2e import bench_e2e

    quiet = json_to_stdout(json_out)
    threads = default_threads(threads)  # the same count for every engine compared
    result = bench_e2e(
        model, repeat, threads, gguf_type, max_new_tokens, dtype, device, on_step=step_printer(quiet)
    )
    if emit_result(result, json_out):
        return
    for name, r in result["e2e"].items():
        out.print(
            f"{name:>8}: first question {number(r['ttft_first_ms'], '.0f')} ms to first token, follow-up "
            f"{number(r['ttft_followup_ms'], '.0f')} ms, decode {number(r['decode_tok_s'], '.1f')} tok/s, "
            f"peak RSS {r['peak_rss_mb']:.0f} MB"
        )
    ratio = result["ratios"]["runtime_followup_vs_first_ttft"]
    out.print(f"runtime follow-up / first TTFT: {number(ratio, '.1%')} (goal <= 10%)")


@app.command()
@handle_errors
def serve(
    bundle: Annotated[
        Path | None, typer.Option(help="Bundle to serve (default: --model, exported first).")
    ] = None,
    model: BenchModelOpt = "tiny",
    requests: Annotated[int, typer.Option(min=1, help="Requests per client at each level.")] = 6,
    seconds: Annotated[float, typer.Option(min=1.0, help="Time bound per level.")] = 120.0,
    max_tokens: Annotated[int, typer.Option(min=1, help="Longest answer.")] = 16,
    small_queue: Annotated[int, typer.Option(min=0, help="--max-queue of the overload run.")] = 1,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the result as JSON ('-': stdout).")
    ] = None,
) -> None:
    """`panda serve` on 127.0.0.1 under 1, 2, 4 and 8 concurrent openai clients: time to first token
    p50/p95, completed requests per minute, failures, prefix reuse, and 503s past a small --max-queue."""
    from panda_edge.bench.serve import bench_serve

    quiet = json_to_stdout(json_out)
    result = bench_serve(
        bundle, model, requests, seconds, max_tokens, small_queue, on_step=step_printer(quiet)
    )
    if emit_result(result, json_out):
        return
    reuse = result["prefix_reuse"]
    out.print(
        f"prefix reuse: first request {number(reuse['ttft_first_ms'], '.0f')} ms to first token, same "
        f"video again {number(reuse['ttft_same_video_ms'], '.0f')} ms "
        f"({number(reuse['same_video_vs_first'], '.1%')})"
    )
    for level in [*result.get("concurrency", []), *filter(None, [result.get("overload")])]:
        name = f"{level['clients']} clients" + (" (small queue)" if "max_queue" in level else "")
        out.print(
            f"{name:>22}: TTFT p50 {number(level['ttft_p50_ms'], '.0f')} ms, p95 "
            f"{number(level['ttft_p95_ms'], '.0f')} ms, {number(level['completed_per_minute'], '.1f')} "
            f"completed/min, failures {level['failures']} {level['statuses']}"
        )


@app.command()
@handle_errors
def watch(
    model: BenchModelOpt = "tiny",
    seconds: Annotated[
        float, typer.Option(min=5.0, help="How long to watch (after the first window).")
    ] = 60.0,
    window: Annotated[float, typer.Option(min=0.5, help="Window length, seconds.")] = DEFAULT_WINDOW_S,
    every: Annotated[
        float, typer.Option(min=0.0, help="Refresh the window at most this often.")
    ] = DEFAULT_EVERY_S,
    fps: Annotated[float, typer.Option(min=1.0, help="The published stream's frame rate.")] = 25.0,
    size: Annotated[str, typer.Option(help="The published stream's WIDTHxHEIGHT.")] = "640x360",
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the result as JSON ('-': stdout).")
    ] = None,
) -> None:
    """A live window on a real-time local stream (a test pattern over MPEG-TS/TCP): frames ingested and
    dropped per second, window refresh period, question-to-first-token against the ready window vs a
    cold question, peak and growing memory."""
    from panda_edge.bench.watch import bench_watch
    from panda_edge.cli._common import parse_size

    quiet = json_to_stdout(json_out)
    result = bench_watch(model, seconds, window, every, fps, parse_size(size), on_step=step_printer(quiet))
    if emit_result(result, json_out):
        return
    ttft, ready = result["ttft_ms"]["cold"], result["ttft_ms"]["ready_window"]
    out.print(
        f"{result['frames_in_per_s']} frames/s in, {result['frames_dropped_per_s']} dropped/s; window every "
        f"{result['refresh_period_s']['p50']} s (p95 {result['refresh_period_s']['p95']})"
    )
    out.print(
        f"first token: ready window p50 {ready['p50']} ms (p95 {ready['p95']}), "
        f"cold p50 {ttft['p50']} ms (p95 {ttft['p95']}); peak RSS "
        f"{result['memory_mb']['end'].get('VmHWM')} MB, growth {result['rss_growth_mb']} MB"
    )


@app.command(name="all")
@handle_errors
def all_benchmarks(
    repeat: Annotated[int, typer.Option(min=1, help="Timed runs per engine, after one warm-up run.")] = 3,
    threads: Threads = None,
    e2e_model: Annotated[str, typer.Option(help="e2e model: bench (full size) or tiny.")] = "bench",
    plot_out: Annotated[
        Path | None, typer.Option("--plot", help="Draw latency per stage and per backend into this PNG.")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write every result as JSON ('-': stdout).")
    ] = None,
) -> None:
    """vision, llm, e2e and the GGUF conversion's peak memory in one run, with the machine's limits
    (memory bandwidth, fp32 GEMM), a roofline line per result, ratios to the PyTorch baselines and
    the docs/design.md §6 goals."""
    from panda_edge.bench.all import bench_all

    quiet = json_to_stdout(json_out)
    threads = default_threads(threads)  # the same count for every engine compared
    result = bench_all(repeat, threads, e2e_model, on_step=step_printer(quiet), plot_path=plot_out)
    if emit_result(result, json_out):
        return
    for name, ratio in result["ratios"]["vision_vs_torch"].items():
        median = result["vision"][name]["median_ms"]
        out.print(f"vision {name:>10}: {median:8.0f} ms  ({number(ratio, '.2f')}x torch)")
    for name, r in result["llm"].items():
        out.print(
            f"llm {name:>16}: prefill {number(r['prefill_tok_s'], '8.1f')} tok/s, "
            f"decode {number(r['decode_tok_s'], '6.1f')} tok/s"
        )
    for name, r in result["e2e"].items():
        out.print(
            f"e2e {name:>8}: TTFT first {number(r['ttft_first_ms'], '.0f')} ms, "
            f"follow-up {number(r['ttft_followup_ms'], '.0f')} ms"
        )
    memory = result["gguf_memory"]
    out.print(
        f"gguf f16 conversion: peak RSS {memory['peak_rss_mb']:.0f} MB for a "
        f"{memory['checkpoint']['weight_bytes'] / 1e9:.2f} GB checkpoint"
    )
    for goal, verdict in result["goals"].items():
        out.print(f"goal {goal}: {'met' if verdict['met'] else 'NOT met'} {verdict}")
