"""`panda run` and `panda chat`: the device runtime on a bundle (vision backend + llama.cpp, no torch)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from panda_edge.backends import CPU, DEFAULT_BACKEND, DEFAULT_KV_CACHE
from panda_edge.cli._common import (
    BundleOpt,
    CacheMaxOpt,
    CacheOpt,
    CheckpointOpt,
    CtxOpt,
    GgufOpt,
    GpuLayersOpt,
    KvCacheAlias,
    KvTypeOpt,
    LoraOpt,
    PrecisionOpt,
    Threads,
    VisionDeviceOpt,
    VisionOpt,
    emit_json,
    err,
    handle_errors,
    json_to_stdout,
    note,
    number,
    out,
    print_model_text,
    runtime_options,
    spinner,
)
from panda_edge.errors import PandaError

VideoArg = Annotated[Path, typer.Argument(help="Video file (mp4, mkv, webm, avi, mov, gif).")]
MaxTokensOpt = Annotated[int, typer.Option("--max-new-tokens", min=1, help="Stop after this many tokens.")]
TemperatureOpt = Annotated[float, typer.Option("--temperature", min=0.0, help="0 is greedy.")]
TopPOpt = Annotated[float, typer.Option("--top-p", min=0.0, max=1.0, help="Nucleus sampling cut.")]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Seed for sampling (temperature > 0).")]
JsonOpt = Annotated[
    Path | None, typer.Option("--json", help="Write the answer(s) and timings as JSON ('-': stdout).")
]


def _open_runtime(bundle: Path, options: Any) -> Any:
    with spinner("loading the bundle"):
        return options.open(bundle)


def _sampling(temperature: float, top_p: float, seed: int | None):
    from panda_edge.sampling import Sampling

    if top_p <= 0:
        raise PandaError("--top-p must be above 0")
    return Sampling(temperature=temperature, top_p=top_p, seed=seed)


@handle_errors
def run(
    video: VideoArg,
    question: Annotated[str, typer.Argument(help="The question about the video.")],
    bundle: BundleOpt,
    vision: VisionOpt = DEFAULT_BACKEND,
    precision: PrecisionOpt = None,
    gguf_type: GgufOpt = None,
    max_new_tokens: MaxTokensOpt = 64,
    n_gpu_layers: GpuLayersOpt = 0,
    threads: Threads = None,
    n_ctx: CtxOpt = None,
    temperature: TemperatureOpt = 0.0,
    top_p: TopPOpt = 1.0,
    seed: SeedOpt = None,
    cache: CacheOpt = None,
    cache_max_gb: CacheMaxOpt = 20.0,
    kv_type: KvTypeOpt = DEFAULT_KV_CACHE,
    kv_cache: KvCacheAlias = None,
    checkpoint: CheckpointOpt = None,
    device: VisionDeviceOpt = CPU,
    lora: LoraOpt = None,
    json_out: JsonOpt = None,
) -> None:
    """Answer QUESTION about VIDEO with the bundle: vision graph -> visual tokens -> llama.cpp.

    The answer streams to stdout as it is generated; timings go to stderr. Greedy unless
    --temperature > 0. Exit 2 for a bad video, a missing or mismatched bundle.
    """
    sampling = _sampling(temperature, top_p, seed)
    quiet = json_to_stdout(json_out)
    options = runtime_options(
        vision,
        precision,
        gguf_type,
        threads,
        n_gpu_layers,
        n_ctx,
        kv_type,
        kv_cache,
        cache,
        cache_max_gb,
        checkpoint,
        lora,
        device,
    )
    with _open_runtime(bundle, options) as runtime:
        answer = runtime.answer(
            video, question, max_new_tokens, sampling, on_text=None if quiet else print_model_text
        )
        info = runtime.describe()
    if not quiet:
        out.print()
        note(_timing_line(answer))
    if json_out is not None:
        emit_json({**info, "video": str(video), "question": question, **answer.to_dict()}, json_out)


@handle_errors
def chat(
    video: VideoArg,
    bundle: BundleOpt,
    vision: VisionOpt = DEFAULT_BACKEND,
    precision: PrecisionOpt = None,
    gguf_type: GgufOpt = None,
    max_new_tokens: MaxTokensOpt = 256,
    n_gpu_layers: GpuLayersOpt = 0,
    threads: Threads = None,
    n_ctx: CtxOpt = None,
    temperature: TemperatureOpt = 0.0,
    top_p: TopPOpt = 1.0,
    seed: SeedOpt = None,
    cache: CacheOpt = None,
    cache_max_gb: CacheMaxOpt = 20.0,
    kv_type: KvTypeOpt = DEFAULT_KV_CACHE,
    kv_cache: KvCacheAlias = None,
    checkpoint: CheckpointOpt = None,
    device: VisionDeviceOpt = CPU,
    lora: LoraOpt = None,
    json_out: JsonOpt = None,
) -> None:
    """Talk about VIDEO: one question per line on stdin, answers streamed (Vicuna v1 turns).

    The video prefix (system prompt + visual tokens) is computed once and stays in the KV cache;
    each follow-up adds only its own text. `/reset` starts a new conversation about the same video,
    an empty line or end of input quits. With --cache the prefix is kept on disk for later runs.
    """
    sampling = _sampling(temperature, top_p, seed)
    quiet = json_to_stdout(json_out)
    interactive = sys.stdin.isatty()
    turns: list[dict[str, Any]] = []
    options = runtime_options(
        vision,
        precision,
        gguf_type,
        threads,
        n_gpu_layers,
        n_ctx,
        kv_type,
        kv_cache,
        cache,
        cache_max_gb,
        checkpoint,
        lora,
        device,
    )
    with _open_runtime(bundle, options) as runtime:
        conversation = runtime.chat(video)
        if interactive:
            err.print(f"chatting about {video}; empty line to quit, /reset for a new conversation")
        while True:
            if interactive:
                err.print("[bold]>[/] ", end="")
            line = sys.stdin.readline()
            question = line.strip()
            if not question or question in ("/quit", "/exit"):
                break
            if question == "/reset":
                conversation = runtime.chat(video)
                continue
            try:
                answer = conversation.ask(
                    question, max_new_tokens, sampling, on_text=None if quiet else print_model_text
                )
            except PandaError as exc:  # a full context: the turns so far are still the user's
                if not quiet:
                    out.print()
                if json_out is not None:
                    emit_json(
                        {**runtime.describe(), "video": str(video), "turns": turns, "error": str(exc)},
                        json_out,
                    )
                raise
            turns.append({"question": question, **answer.to_dict()})
            if not quiet:
                out.print()
                note(_timing_line(answer))
        info = runtime.describe()
    if json_out is not None:
        emit_json({**info, "video": str(video), "turns": turns}, json_out)


def _timing_line(answer) -> str:
    parts = [f"first token {answer.ttft_s * 1e3:.0f} ms (prefix {answer.prefix})"]
    parts += [f"{name} {seconds * 1e3:.0f} ms" for name, seconds in answer.timings_s.items()]
    parts.append(f"{len(answer.tokens)} tokens, {number(answer.decode_tok_s, '.1f')} tok/s")
    return "  ".join(parts)
