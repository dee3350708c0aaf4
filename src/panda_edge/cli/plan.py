"""`panda plan`: memory per part, whether it fits, and the decode ceiling of a bundle or preset."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from panda_edge.backends import (
    CPU_BACKEND,
    DEFAULT_KV_CACHE,
    DEFAULT_N_CTX,
    KV_CACHE_TYPES,
    PLANNED_GGUF_TYPES,
    SMALLER_KV_CACHE,
    TRT,
    check_kv_cache,
    default_precision,
    listed,
    precisions,
)
from panda_edge.cli._common import emit_result, handle_errors, old_spelling, out

GIB = 1 << 30
_ROWS = {
    "llm_weights": "LLM weights",
    "kv_cache": "KV cache",
    "llm_compute": "llama.cpp compute buffer",
    "vision_engine": "vision engine weights",
    "vision_activations": "vision activations",
    "cuda_runtime": "CUDA / TensorRT / cuBLAS",
    "host_process": "host process (unified)",
}


@handle_errors
def plan(
    device: Annotated[
        str,
        typer.Option(
            help="orin-nano-8gb, orin-nx-16gb, agx-orin-32gb, agx-orin-64gb, rtx-4090, ..., custom, or cpu "
            "(this machine: its memory, its measured bandwidth, ONNX Runtime fp32 vision)."
        ),
    ],
    bundle: Annotated[Path | None, typer.Option(help="Plan this bundle (its config and GGUF files).")] = None,
    preset: Annotated[
        str | None, typer.Option(help="Plan a preset instead: full (Video-Panda-7B) or tiny.")
    ] = None,
    n_ctx: Annotated[
        int | None,
        typer.Option(
            "--n-ctx",
            min=1,
            help="llama.cpp context the KV cache is allocated for (default: the model's, at most "
            f"{DEFAULT_N_CTX}, as panda run).",
        ),
    ] = None,
    context: Annotated[
        int | None, typer.Option("--context", hidden=True, help="Deprecated spelling of --n-ctx.")
    ] = None,
    kv_type: Annotated[
        str,
        typer.Option(
            help=f"KV cache type: {listed(KV_CACHE_TYPES)} (quantized: flash attention, as panda run)."
        ),
    ] = DEFAULT_KV_CACHE,
    precision: Annotated[
        str | None,
        typer.Option(
            "--precision",
            help=f"Vision engine precision: {listed(precisions(TRT))} (default {default_precision(TRT)}; "
            f"on cpu {default_precision(CPU_BACKEND)}).",
        ),
    ] = None,
    vision_precision: Annotated[
        str | None,
        typer.Option("--vision-precision", hidden=True, help="Deprecated spelling of --precision."),
    ] = None,
    gguf_type: Annotated[
        list[str] | None,
        typer.Option(help=f"GGUF type(s) to plan (default {', '.join(PLANNED_GGUF_TYPES)} + the bundle's)."),
    ] = None,
    reserve_gib: Annotated[
        float | None, typer.Option(help="Memory the OS / driver keeps (default: 2 on Jetson, 0.5 on a GPU).")
    ] = None,
    memory_gib: Annotated[
        float | None, typer.Option(help="Device memory (custom device, or an override).")
    ] = None,
    bandwidth_gbs: Annotated[
        float | None, typer.Option(help="Memory bandwidth in GB/s (custom device).")
    ] = None,
    unified: Annotated[
        bool | None, typer.Option("--unified/--discrete", help="Custom device: memory shared with the CPU?")
    ] = None,
    json_out: Annotated[
        Path | None, typer.Option("--json", help="Write the plan as JSON ('-': stdout).")
    ] = None,
) -> None:
    """Memory needed per part (LLM weights by GGUF tensor type, KV cache, compute buffers, vision engine,
    runtime, OS reserve), whether it fits, the GGUF type to pick, and the decode speed ceiling
    (memory bandwidth / bytes read per token). Estimates, not measurements: see docs/jetson.md."""
    from panda_edge.plan.devices import get_device
    from panda_edge.plan.footprint import model_shape, plan_memory

    n_ctx = old_spelling("--n-ctx", n_ctx, None, "--context", context)
    precision = old_spelling("--precision", precision, None, "--vision-precision", vision_precision)
    model = model_shape(bundle, preset)
    dev = get_device(device, memory_gib, bandwidth_gbs, unified, reserve_gib)
    gguf_types = tuple(gguf_type) if gguf_type else None
    result = plan_memory(model, dev, n_ctx, kv_type, precision, gguf_types)
    if emit_result(result.to_dict(), json_out):
        return
    _render(result)


def _gib(n: int) -> str:
    return f"{n / GIB:.2f}"


def _render(result) -> None:
    from rich.table import Table

    d, m = result.device, result.model
    kind = "unified" if d.unified else "GPU"
    out.print(
        f"{d.label}: {d.memory_gib:g} GiB {kind} memory, {d.bandwidth_gb_s:g} GB/s; {m.source} "
        f"(Llama {m.llm['num_hidden_layers']} x {m.llm['hidden_size']}); context {result.context}, "
        f"KV {result.kv_type}, vision {result.vision_precision}"
    )
    table = Table(show_edge=False, box=None, pad_edge=False)
    table.add_column("GiB")
    for option in result.options:
        table.add_column(option.gguf_type + ("*" if option.weights_measured else ""), justify="right")
    for key, label in _ROWS.items():
        if key in result.options[0].parts:
            table.add_row(label, *(_gib(o.parts[key]) for o in result.options))
    table.add_row(
        f"reserve (OS, {'carveouts, desktop' if d.unified else 'driver'})",
        *(_gib(int(d.reserve_gib * GIB)) for _ in result.options),
    )
    table.add_row("total", *(_gib(o.total + int(d.reserve_gib * GIB)) for o in result.options))
    table.add_row("fits", *("yes" if o.fits else "no" for o in result.options))
    table.add_row("max context", *(str(o.max_context) for o in result.options))
    table.add_row(
        f"decode tok/s ceiling (at {result.decode_position})",
        *(f"{o.decode_tok_s:.1f}" for o in result.options),
    )
    out.print(table)
    if any(o.weights_measured for o in result.options):
        out.print("* LLM weights: the bundle's GGUF file size")
    out.print(_advice(result))


def _advice(result) -> str:
    note = ""
    trained = result.model.llm.get("max_position_embeddings")
    if trained and result.context > trained:
        note = f" (context {result.context} is beyond the {trained} positions the model was trained for)"
    elif result.context < result.needed_context:
        note = (
            f" (context {result.context} is below the {result.needed_context} a video + prompt + answer need)"
        )
    if result.recommended is None:
        hints = []
        if not check_kv_cache(result.kv_type).flash_attn:
            kv = SMALLER_KV_CACHE
            hints.append(f"a {kv} KV cache (--kv-type {kv}; llama.cpp -ctk {kv} -ctv {kv} -fa)")
        if result.device.unified and result.device.reserve_gib > 1:
            hints.append("a headless system (--reserve-gib 1)")
        hints.append("a larger device")
        return (
            f"nothing fits: no GGUF type leaves room for the {result.needed_context} tokens a video, its "
            f"prompt and an answer need; try {' or '.join(hints)}"
        )
    option = next(o for o in result.options if o.gguf_type == result.recommended)
    types = ", ".join(f"{k} {_gib(v)} GiB" for k, v in option.weights["by_type"].items())
    if result.recommended_context == result.context:
        return f"pick {result.recommended} ({types}){note}"
    return (
        f"at context {result.context} nothing of {', '.join(o.gguf_type for o in result.options)} fits; "
        f"pick {result.recommended} with --context {result.recommended_context} ({types})"
    )
