"""`panda plan`: parameter and byte counts against the modules and the GGUF files themselves, the
memory sums and decode ceilings against hand computation, and the command line."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from panda_edge.cli.main import app
from panda_edge.config import PRESETS, VisionConfig
from panda_edge.errors import PandaError
from panda_edge.model.stab import STAB, build_projector
from panda_edge.plan.devices import DEVICES, get_device
from panda_edge.plan.footprint import GIB, ModelShape, compute_buffer_bytes, plan_memory
from panda_edge.plan.ggml import kv_cache_bytes, llama_tensors, tensor_type, use_more_bits, weight_plan
from panda_edge.plan.vision import vision_parameters

runner = CliRunner()
FULL = asdict(PRESETS["full"])
FULL_LLM = FULL["llm"]


# --- counts against the modules and files -----------------------------------------------------------


@pytest.mark.parametrize(
    ("vision", "projector", "hidden"),
    [
        (PRESETS["full"].vision, "mlp2x_gelu", 4096),
        (PRESETS["tiny"].vision, "mlp2x_gelu", 256),
        (replace(VisionConfig(), width=192, image_size=224, dw_reduction=2.0), "linear", 512),
        (replace(VisionConfig(), width=96, mlp_factor=2.0), "mlp3x_gelu", 64),
    ],
)
def test_vision_parameters_equal_the_modules(vision: VisionConfig, projector: str, hidden: int) -> None:
    with torch.device("meta"):
        stab, proj = STAB(vision), build_projector(projector, vision.width, hidden)
    named = [(n, p) for n, p in stab.named_parameters() if not n.startswith("lmhra2.")]
    named += [(f"projector.{n}", p) for n, p in proj.named_parameters()]
    not_matrices = {"temporal_cls_token", "dpe.weight", "lmhra1.pos_embed.2.weight"}  # depthwise, token
    matrices = sum(p.numel() for n, p in named if p.ndim >= 2 and n not in not_matrices)
    counted = vision_parameters(asdict(vision), projector, hidden)
    assert (counted.total, counted.matrices) == (sum(p.numel() for _, p in named), matrices)


def test_full_size_counts_match_the_design_notes() -> None:
    """docs/design.md §2: STAB + projector 45.1M without lmhra2; Llama-7B 6.74B parameters."""
    assert vision_parameters(FULL["vision"], "mlp2x_gelu", 4096).total == 45_066_578
    assert sum(t.weights for t in llama_tensors(FULL_LLM)) == 6_738_415_616


def test_planned_types_and_bytes_are_those_of_the_written_files(tmp_path: Path) -> None:
    """f16 / q8_0 from our gguf-py converter; q4_k_m / q5_k_m from llama.cpp's quantizer."""
    import gguf

    from panda_edge.export.llm_gguf.export_gguf import export_gguf
    from panda_edge.optional import has_llama_cpp

    types = ["f16", "q8_0"] + (["q4_k_m", "q5_k_m"] if has_llama_cpp() else [])
    llm = asdict(PRESETS["tiny"].llm)
    for gguf_type in types:
        entry = export_gguf("tiny", tmp_path, gguf_type)["llm"]["gguf"][gguf_type]
        tensors = gguf.GGUFReader(tmp_path / entry["file"]).tensors
        written = {t.name: (t.tensor_type.name, int(t.n_bytes)) for t in tensors}
        plan = weight_plan(llm, gguf_type)
        predicted = {t.name: tensor_type(gguf_type, t, llm["num_hidden_layers"]) for t in llama_tensors(llm)}
        assert {n: kind for n, (kind, _) in written.items()} == predicted, gguf_type
        by_type: dict[str, int] = {}
        for kind, size in written.values():
            by_type[kind] = by_type.get(kind, 0) + size
        assert by_type == plan.by_type and plan.tensors_by_type == entry["tensor_types"], gguf_type
    if not has_llama_cpp():
        pytest.skip("K-quants checked against the model only: llama-cpp-python is not installed")


def test_kquant_rules() -> None:
    assert [i for i in range(32) if use_more_bits(i, 32)] == [
        0,
        1,
        2,
        3,
        6,
        9,
        12,
        15,
        18,
        21,
        24,
        27,
        28,
        29,
        30,
        31,
    ]
    tensors = {t.name: t for t in llama_tensors(FULL_LLM)}
    kinds = {n: tensor_type("q4_k_m", t, 32) for n, t in tensors.items()}
    assert kinds["output.weight"] == "Q6_K" and kinds["token_embd.weight"] == "Q4_K"
    assert kinds["blk.5.attn_v.weight"] == "Q4_K" and kinds["blk.6.attn_v.weight"] == "Q6_K"
    assert kinds["blk.31.ffn_down.weight"] == "Q6_K" and kinds["blk.31.ffn_up.weight"] == "Q4_K"
    assert kinds["blk.0.attn_norm.weight"] == "F32"
    odd = {**FULL_LLM, "hidden_size": 4000, "num_attention_heads": 25}  # rows not a multiple of 256
    odd_tensors = {t.name: t for t in llama_tensors(odd)}
    assert tensor_type("q4_k_m", odd_tensors["blk.1.attn_q.weight"], 32) == "Q5_0"
    assert tensor_type("q5_k_m", odd_tensors["blk.1.attn_q.weight"], 32) == "Q5_1"
    assert tensor_type("q4_k_m", odd_tensors["output.weight"], 32) == "Q8_0"


# --- sums against hand computation ------------------------------------------------------------------

# Llama-7B: 32 layers of 4 x 4096^2 attention + 3 x 4096 x 11008 FFN, embeddings and output 32000 x 4096
ATTN, FFN, EMB, NORMS = 4096 * 4096, 4096 * 11008, 32000 * 4096, (32 * 2 + 1) * 4096


def test_full_size_weights_by_hand() -> None:
    matrices = 32 * (4 * ATTN + 3 * FFN) + 2 * EMB
    assert weight_plan(FULL_LLM, "f16").by_type == {"F16": 2 * matrices, "F32": 4 * NORMS}
    assert weight_plan(FULL_LLM, "q8_0").by_type == {"Q8_0": matrices * 34 // 32, "F32": 4 * NORMS}
    # Q6_K: output, and attn_v + ffn_down in 16 of 32 layers; Q4_K: the rest (token_embd included)
    q6 = EMB + 16 * (ATTN + FFN)
    q4 = matrices - q6
    plan = weight_plan(FULL_LLM, "q4_k_m")
    assert plan.by_type == {"Q4_K": q4 * 144 // 256, "Q6_K": q6 * 210 // 256, "F32": 4 * NORMS}
    assert plan.total == 4_080_263_168  # 4.08 GB, as llama.cpp's Llama-2-7B Q4_K_M files are
    assert weight_plan(FULL_LLM, "q5_k_m").total == q4 * 176 // 256 + q6 * 210 // 256 + 4 * NORMS


def test_kv_cache_and_compute_buffer_by_hand() -> None:
    assert kv_cache_bytes(FULL_LLM, 4096) == 2 * 32 * 4096 * 32 * 128 * 2 == 2 * GIB
    assert kv_cache_bytes(FULL_LLM, 4096, "q8_0") == 2 * 32 * 4096 * 4096 * 34 // 32
    assert compute_buffer_bytes(FULL_LLM, 4096) == 4 * 512 * (32 * 4096 + 2 * 11008 + 4 * 4096)


def test_agx_orin_64gb_plan_by_hand() -> None:
    plan = plan_memory(ModelShape.from_config(FULL, "preset:full"), DEVICES["agx-orin-64gb"])
    q8 = next(o for o in plan.options if o.gguf_type == "q8_0")
    weights = 7_160_348_672
    kv_at_answer = 2 * 32 * (2184 + 64) * 4096 * 2  # the KV cache read for the first answer token
    per_token = weights - EMB * 34 // 32 + kv_at_answer  # the embedding table: one row per token
    assert plan.decode_position == 2184 + 64 and q8.bytes_per_token == per_token
    assert q8.decode_tok_s == pytest.approx(204.8e9 / per_token) and round(q8.decode_tok_s, 1) == 25.0
    assert q8.parts["llm_weights"] == weights and q8.parts["kv_cache"] == 2 * GIB
    assert q8.parts["vision_engine"] == 2 * 45_066_578 and "host_process" in q8.parts
    assert q8.available == 62 * GIB and q8.fits and plan.recommended == "q8_0"
    assert [o.gguf_type for o in plan.options] == ["f16", "q8_0", "q5_k_m", "q4_k_m"]


def test_orin_nano_8gb_needs_a_smaller_cache_or_less_reserve() -> None:
    model = ModelShape.from_config(FULL, "preset:full")
    plan = plan_memory(model, DEVICES["orin-nano-8gb"])
    assert plan.recommended is None and not any(o.fits for o in plan.options)
    q4 = next(o for o in plan.options if o.gguf_type == "q4_k_m")
    assert q4.max_context < plan.needed_context == 2184 + 64 + 256
    headless = plan_memory(model, get_device("orin-nano-8gb", reserve_gib=1.0), kv_type="q8_0")
    assert headless.recommended == "q4_k_m" and headless.recommended_context == 4096


def test_max_context_is_the_largest_that_fits() -> None:
    model = ModelShape.from_config(FULL, "preset:full")
    device = get_device("orin-nx-16gb")
    for option in plan_memory(model, device).options:
        if 0 < option.max_context < 4096:
            at = plan_memory(model, device, context=option.max_context, gguf_types=(option.gguf_type,))
            over = plan_memory(
                model, device, context=option.max_context + 256, gguf_types=(option.gguf_type,)
            )
            assert at.options[0].fits and not over.options[0].fits


def test_discrete_gpu_has_no_host_process_and_bad_input_is_refused() -> None:
    plan = plan_memory(ModelShape.from_config(FULL, "preset:full"), DEVICES["rtx-4090"], gguf_types=("f16",))
    (f16,) = plan.options
    assert "host_process" not in f16.parts and f16.available == int(23.5 * GIB) and f16.fits
    with pytest.raises(PandaError, match="unknown device 'orin'"):
        get_device("orin")
    with pytest.raises(PandaError, match="--device custom needs --memory-gib and --bandwidth-gbs"):
        get_device("custom", memory_gib=12)
    with pytest.raises(PandaError, match="unknown GGUF type 'q3_k'"):
        plan_memory(ModelShape.from_config(FULL, "x"), DEVICES["t4"], gguf_types=("q3_k",))


# --- the command line -------------------------------------------------------------------------------


def test_plan_json_and_table() -> None:
    result = runner.invoke(app, ["plan", "--device", "agx-orin-32gb", "--preset", "full", "--json", "-"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["recommended"] == "q8_0" and report["device"]["bandwidth_gb_s"] == 204.8
    q4 = report["options"][3]
    assert (
        q4["gguf_type"] == "q4_k_m"
        and q4["weights"]["by_type"]["Q6_K"] == (EMB + 16 * (ATTN + FFN)) * 210 // 256
    )
    result = runner.invoke(app, ["plan", "--device", "orin-nano-8gb", "--preset", "full"])
    assert result.exit_code == 0 and "nothing fits" in result.stdout and "--kv-type q8_0" in result.stdout
    custom = ["--device", "custom", "--memory-gib", "12", "--bandwidth-gbs", "136", "--unified"]
    result = runner.invoke(app, ["plan", *custom, "--preset", "full"])  # q8_0 leaves too little for the OS
    assert result.exit_code == 0 and "pick q5_k_m" in result.stdout


def test_plan_of_a_bundle_uses_its_gguf_file(tmp_path: Path) -> None:
    from panda_edge.export.llm_gguf.export_gguf import export_gguf

    entry = export_gguf("tiny", tmp_path, "q8_0")["llm"]["gguf"]["q8_0"]
    args = ["plan", "--device", "orin-nano-4gb", "--bundle", str(tmp_path), "--json", "-"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    q8 = next(o for o in report["options"] if o["gguf_type"] == "q8_0")
    assert q8["weights_measured"] and q8["parts_bytes"]["llm_weights"] == entry["size"]
    assert report["model"]["visual_tokens_per_video"] == 8 * 21 and report["recommended"] == "q8_0"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--device", "orin-nano-8gb"], "give one of --bundle BUNDLE or --preset full|tiny"),
        (["--device", "nano", "--preset", "full"], "unknown device 'nano'; choose one of: orin-nano-4gb"),
        (["--device", "t4", "--preset", "huge"], "unknown preset 'huge'"),
        (["--device", "t4", "--preset", "full", "--kv-type", "f8"], "unknown KV cache type 'f8'"),
        (["--device", "t4", "--bundle", "/nonexistent"], "no such bundle directory"),
    ],
)
def test_plan_bad_input_exits_2(args: list[str], message: str) -> None:
    result = runner.invoke(app, ["plan", *args])
    assert result.exit_code == 2 and message in result.stderr and "Traceback" not in result.output


def test_this_machine_as_the_device() -> None:
    """`--device cpu`: this machine's memory and measured bandwidth, ONNX Runtime fp32 vision, no CUDA
    runtime; what `panda run` here should peak at (checked at 7B by benchmarks/scale_7b.py)."""
    result = runner.invoke(app, ["plan", "--device", "cpu", "--preset", "full", "--json", "-"])
    assert result.exit_code == 0, result.output
    plan = json.loads(result.stdout)
    assert plan["device"]["name"] == "cpu" and plan["device"]["unified"] is True
    assert plan["device"]["bandwidth_gb_s"] > 0 and plan["device"]["memory_gib"] > 1
    assert plan["vision_precision"] == "fp32"
    parts = {o["gguf_type"]: o["parts_bytes"] for o in plan["options"]}["q4_k_m"]
    assert "cuda_runtime" not in parts and parts["host_process"] > 0
    assert 180e6 < parts["vision_engine"] < 190e6  # 46.5M parameters in float32


def test_plan_spells_its_options_as_panda_run_does() -> None:
    """--n-ctx and --precision, as run, chat and serve spell them; the old --context and
    --vision-precision still work, with a warning, and give the same plan."""
    base = ["plan", "--device", "agx-orin-32gb", "--preset", "full", "--json", "-"]
    new = runner.invoke(app, [*base, "--n-ctx", "2048", "--precision", "int8"])
    old = runner.invoke(app, [*base, "--context", "2048", "--vision-precision", "int8"])
    assert new.exit_code == 0 and old.exit_code == 0
    assert json.loads(new.stdout) == json.loads(old.stdout)
    assert json.loads(new.stdout)["context"] == 2048 and json.loads(new.stdout)["vision_precision"] == "int8"
    assert "--context is deprecated: use --n-ctx" in old.stderr
    assert "--vision-precision is deprecated: use --precision" in old.stderr


def test_plan_sizes_the_context_and_vision_panda_run_would_use() -> None:
    """Without --n-ctx the plan sizes the context `panda run` allocates (the model's, at most 4096:
    2048 for the tiny model); on the cpu device the vision part is ONNX Runtime's, which has no fp16."""
    tiny = runner.invoke(app, ["plan", "--device", "cpu", "--preset", "tiny", "--json", "-"])
    assert tiny.exit_code == 0 and json.loads(tiny.stdout)["context"] == 2048
    full = runner.invoke(app, ["plan", "--device", "cpu", "--preset", "full", "--json", "-"])
    assert json.loads(full.stdout)["context"] == 4096
    fp16 = runner.invoke(app, ["plan", "--device", "cpu", "--preset", "tiny", "--precision", "fp16"])
    assert fp16.exit_code == 2 and "fp16" in fp16.stderr and "Traceback" not in fp16.output
