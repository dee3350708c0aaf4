"""LLM speed: transformers eager fp32 vs llama.cpp (f16, q8_0, q4_k_m) on the same random Llama.

Prefill (prompt tokens/s) and greedy decode (tokens/s), medians of a few runs after a warm-up,
same thread count for both (docs/design.md §6). The weights are random and rounded to fp16 once, so
every engine starts from identical numbers; speed does not depend on their values.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from panda_edge.backends import BENCHMARKED_GGUF_TYPES
from panda_edge.bundle import Manifest
from panda_edge.config import LlmConfig, ModelConfig
from panda_edge.timing import BELOW_RESOLUTION, median_s, quotient, rate, significant

# ~0.54B parameters: Llama-7B's head size and vocabulary, narrower and shallower.
BENCH_LLM = LlmConfig(
    hidden_size=2048,
    intermediate_size=5632,
    num_hidden_layers=8,
    num_attention_heads=32,
    num_key_value_heads=32,
    vocab_size=32000,
    max_position_embeddings=2048,
)
GGUF_TYPES = BENCHMARKED_GGUF_TYPES


def synthetic_tokenizer(path: Path, vocab: int) -> None:
    """The embedded tiny tokenizer grown to `vocab` pieces (the extra pieces never win a merge)."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    from panda_edge.assets import tiny_checkpoint

    model = pb.ModelProto()
    model.ParseFromString((tiny_checkpoint() / "tokenizer.model").read_bytes())
    for i in range(vocab - len(model.pieces)):
        piece = model.pieces.add()
        piece.piece, piece.score, piece.type = f"\u2581synthetic{i}", -1e4 - i, 1
    path.write_bytes(model.SerializeToString())


def _summary(prefill: list[float], decode: list[float], prompt: int, new: int) -> dict[str, Any]:
    """Tokens/s from the unrounded medians (None, with the reason, when a time is too short to measure)."""
    summary: dict[str, Any] = {
        "prefill_tok_s": rate(prompt, median_s(prefill)),
        "decode_tok_s": rate(new, median_s(decode)),
        "prefill_runs_s": [significant(t) for t in prefill],
        "decode_runs_s": [significant(t) for t in decode],
    }
    unmeasured = {k: BELOW_RESOLUTION for k in ("prefill_tok_s", "decode_tok_s") if summary[k] is None}
    if unmeasured:
        summary["unmeasured"] = unmeasured
    return summary


def bench_llm(
    llm: LlmConfig = BENCH_LLM,
    repeat: int = 3,
    prompt_tokens: int = 128,
    decode_tokens: int = 64,
    threads: int = 2,
    types: tuple[str, ...] = GGUF_TYPES,
    seed: int = 0,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """transformers eager fp32 vs llama.cpp per GGUF type on one random Llama: prefill and decode
    tokens/s, each engine `repeat` times after a warm-up."""
    import torch
    from transformers import LlamaForCausalLM

    from panda_edge.config import official_config_dict
    from panda_edge.export.llm_gguf.export_gguf import export_gguf
    from panda_edge.fileio import write_json
    from panda_edge.model.checkpoint import write_weights
    from panda_edge.model.videopanda import llama_config
    from panda_edge.optional import llama_cpp

    llama_cpp()  # missing llama-cpp-python fails before the model is built
    step = on_step or (lambda message: None)
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    config = llama_config(llm)
    config._attn_implementation = "eager"
    step(f"building a random Llama ({llm.num_hidden_layers} layers, hidden {llm.hidden_size})")
    model = LlamaForCausalLM(config).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.half().float())  # the GGUFs start from the same fp16 numbers
    params = sum(p.numel() for p in model.parameters())
    prompt = np.random.default_rng(seed).integers(3, llm.vocab_size, prompt_tokens).tolist()
    result: dict[str, Any] = {}

    @torch.inference_mode()
    def run_torch() -> tuple[float, float]:
        start = time.perf_counter()
        out = model(torch.tensor([prompt]), use_cache=True)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(decode_tokens):
            token = int(out.logits[0, -1].argmax())
            out = model(torch.tensor([[token]]), cache=out.cache, use_cache=True)
        return prefill, time.perf_counter() - start

    step("timing transformers eager fp32")
    result["transformers"] = _timed(run_torch, repeat, prompt_tokens, decode_tokens)
    with tempfile.TemporaryDirectory(prefix="panda-bench-llm-") as tmp:
        ckpt, bundle = Path(tmp) / "ckpt", Path(tmp) / "bundle"
        ckpt.mkdir()
        write_weights(ckpt, {k: v.half() for k, v in model.state_dict().items()})
        write_json(ckpt / "config.json", official_config_dict(ModelConfig(llm=llm)))
        synthetic_tokenizer(ckpt / "tokenizer.model", llm.vocab_size)
        for t in types:
            step(f"exporting {t} GGUF")
            manifest = Manifest.from_dict(export_gguf(ckpt, bundle, t), bundle)
            gguf = manifest.gguf_path(t)
            step(f"timing llama.cpp {t}")
            runner = _llama_runner(gguf, prompt, decode_tokens, threads)
            timing = _timed(runner, repeat, prompt_tokens, decode_tokens)
            result[f"llama.cpp-{t}"] = {**timing, "gguf_bytes": manifest.files[gguf.name].size}
    base = result["transformers"]
    ratios = {
        name: {
            "prefill_x": quotient(r["prefill_tok_s"], base["prefill_tok_s"]),
            "decode_x": quotient(r["decode_tok_s"], base["decode_tok_s"]),
        }
        for name, r in result.items()
        if name != "transformers"
    }
    return {
        "llm": result,
        "ratios_vs_transformers": ratios,
        "model": {**vars(llm), "parameters": params, "weights": "random, rounded to fp16"},
        "prompt_tokens": prompt_tokens,
        "decode_tokens": decode_tokens,
        "threads": threads,
        "repeat": repeat,
        "method": "median of `repeat` runs after one warm-up; greedy decode; llama.cpp KV cache f16",
    }


def _timed(run: Callable[[], tuple[float, float]], repeat: int, prompt: int, new: int) -> dict[str, Any]:
    run()  # warm-up
    prefill, decode = zip(*(run() for _ in range(repeat)), strict=True)
    return _summary(list(prefill), list(decode), prompt, new)


def _llama_runner(path: Path, prompt: list[int], new: int, threads: int) -> Callable[[], tuple[float, float]]:
    from panda_edge.optional import llama_cpp
    from panda_edge.runtime.llm.llamacpp import load_llama

    lib = llama_cpp()
    # loaded as the runtime loads it (the same buffers on AMX CPUs)
    llm = load_llama(path, n_ctx=len(prompt) + new + 8, n_batch=len(prompt), threads=threads)

    n_vocab = llm.n_vocab()

    def last_token() -> int:
        """Greedy pick from the last position's logits (llama-cpp-python keeps none without logits_all)."""
        return int(np.argmax(np.ctypeslib.as_array(lib.llama_get_logits_ith(llm.ctx, -1), shape=(n_vocab,))))

    def run() -> tuple[float, float]:
        llm.reset()
        start = time.perf_counter()
        llm.eval(prompt)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        for _ in range(new):
            llm.eval([last_token()])
        return prefill, time.perf_counter() - start

    return run
