"""Peak memory of the streaming GGUF conversion on a full-width Llama checkpoint (random weights).

Writes a synthetic checkpoint in the released layout (sharded float32 safetensors + index,
official-style config.json, a 32000-piece tokenizer.model; Llama weights only, hidden 4096,
FFN 11008, vocab 32000, fewer layers), converts it to f16 GGUF with `panda export --target gguf` in
a child process, and records the child's peak RSS (its own VmHWM) against the checkpoint size, next to
the peak RSS of a child that only imports the same code (the fixed overhead). The synthetic files are
deleted afterwards. `panda bench all` runs it; docs/design.md §6's goal is a peak below 25% of the checkpoint.
"""

from __future__ import annotations

import json
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HIDDEN, FFN, VOCAB = 4096, 11008, 32000


def write_checkpoint(directory: Path, layers: int, seed: int = 0) -> int:
    """One float32 shard per layer plus embeddings and head; returns the weight bytes."""
    from safetensors.numpy import save_file

    from panda_edge.bench.llm import synthetic_tokenizer
    from panda_edge.config import LlmConfig, ModelConfig, official_config_dict
    from panda_edge.fileio import write_json

    rng = np.random.default_rng(seed)

    def rand(*shape: int) -> np.ndarray:
        return rng.standard_normal(shape, dtype=np.float32) * 0.02

    directory.mkdir(parents=True)
    shards: list[dict[str, tuple[int, ...]]] = [{"model.embed_tokens.weight": (VOCAB, HIDDEN)}]
    for i in range(layers):
        p = f"model.layers.{i}."
        shards.append(
            {
                p + "self_attn.q_proj.weight": (HIDDEN, HIDDEN),
                p + "self_attn.k_proj.weight": (HIDDEN, HIDDEN),
                p + "self_attn.v_proj.weight": (HIDDEN, HIDDEN),
                p + "self_attn.o_proj.weight": (HIDDEN, HIDDEN),
                p + "mlp.gate_proj.weight": (FFN, HIDDEN),
                p + "mlp.up_proj.weight": (FFN, HIDDEN),
                p + "mlp.down_proj.weight": (HIDDEN, FFN),
                p + "input_layernorm.weight": (HIDDEN,),
                p + "post_attention_layernorm.weight": (HIDDEN,),
            }
        )
    shards.append({"model.norm.weight": (HIDDEN,), "lm_head.weight": (VOCAB, HIDDEN)})
    weight_map, total = {}, 0
    for k, shard in enumerate(shards, start=1):
        name = f"model-{k:05d}-of-{len(shards):05d}.safetensors"
        tensors = {n: rand(*s) for n, s in shard.items()}
        save_file(tensors, str(directory / name), metadata={"format": "pt"})
        total += sum(t.nbytes for t in tensors.values())
        weight_map.update(dict.fromkeys(shard, name))
        del tensors
    write_json(
        directory / "model.safetensors.index.json",
        {"metadata": {"total_size": total}, "weight_map": weight_map},
    )
    llm = LlmConfig(num_hidden_layers=layers)
    config = official_config_dict(ModelConfig(llm=llm))  # the released tower name, mlp2x_gelu, width 1024
    config.pop("_panda_preset")
    write_json(directory / "config.json", config)
    synthetic_tokenizer(directory / "tokenizer.model", VOCAB)
    return total


# Runs `-m module args...` or `-c code` and, at exit, writes the process's own peak RSS to argv[1].
_MEASURED_CHILD = """
import atexit, runpy, sys
from panda_edge.bench.machine import peak_rss_mb
from panda_edge.bundle import Manifest
report = sys.argv[1]
atexit.register(lambda: open(report, "w").write(str(peak_rss_mb())))
mode, target = sys.argv[2], sys.argv[3]
sys.argv = [target, *sys.argv[4:]]
if mode == "-m":
    runpy.run_module(target, run_name="__main__", alter_sys=True)
else:
    exec(compile(target, "<child>", "exec"), {"__name__": "__main__"})
"""


def child_peak_rss(args: list[str]) -> tuple[float, float, str]:
    """Run a child Python (`-m module ...` or `-c code`): its own peak RSS in MB, seconds, stdout.

    The child reads its own VmHWM at exit: the kernel's ru_maxrss of a child carries the parent's
    peak over the exec, which inside `panda bench all` (a parent of several GB) is not the child's.
    """
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        report = Path(tmp) / "peak_rss_mb"
        done = subprocess.run(
            [sys.executable, "-c", _MEASURED_CHILD, str(report), *args], capture_output=True, text=True
        )
        seconds = time.perf_counter() - start
        if done.returncode != 0:
            raise RuntimeError(f"child failed ({done.returncode}): {done.stderr[-2000:]}")
        return float(report.read_text()), seconds, done.stdout


def bench_gguf_memory(layers: int = 3, workdir: Path | None = None) -> dict:
    """Write, convert and measure; returns the JSON-ready result."""
    work = Path(tempfile.mkdtemp(prefix="panda-gguf-rss-", dir=workdir))
    try:
        ckpt, bundle = work / "ckpt", work / "bundle"
        code = "import pathlib, panda_edge.bench.gguf_memory as g; "
        code += f"print(g.write_checkpoint(pathlib.Path({str(ckpt)!r}), {layers}))"
        weight_bytes = int(child_peak_rss(["-c", code])[2])
        # The fixed overhead: a child with the same imports and no conversion.
        imports = (
            "import panda_edge.cli.main, panda_edge.export.llm_gguf.export_gguf, panda_edge.model.checkpoint"
        )
        base_rss, _, _ = child_peak_rss(["-c", imports])
        cli = ["-m", "panda_edge.cli.main", "export", "--target", "gguf", "--checkpoint", str(ckpt)]
        peak_rss, seconds, stdout = child_peak_rss(
            [*cli, "--out", str(bundle), "--gguf-type", "f16", "--json", "-"]
        )
        from panda_edge.bundle import Manifest

        manifest = Manifest.from_dict(json.loads(stdout), bundle)
        gguf = manifest.gguf("f16")
        return {
            "what": "peak RSS of `panda export --target gguf --gguf-type f16` (child process, its VmHWM)",
            "checkpoint": {
                "layers": layers,
                "hidden": HIDDEN,
                "ffn": FFN,
                "vocab": VOCAB,
                "dtype": "float32",
                "shards": len(list(ckpt.glob("*.safetensors"))),
                "weight_bytes": weight_bytes,
                "largest_tensor_bytes": VOCAB * HIDDEN * 4,
            },
            "gguf": {
                "bytes": manifest.files[gguf.file].size,
                "tensors": gguf.tensor_count,
                "types": gguf.tensor_types,
            },
            "peak_rss_mb": round(peak_rss, 1),
            "import_only_rss_mb": round(base_rss, 1),
            "ratio_peak_rss_to_checkpoint": round(peak_rss * 2**20 / weight_bytes, 4),
            "limit_ratio": 0.25,
            "passed": peak_rss * 2**20 / weight_bytes < 0.25,
            "conversion_seconds": round(seconds, 1),
            "machine": {"platform": platform.platform(), "python": platform.python_version()},
        }
    finally:
        shutil.rmtree(work, ignore_errors=True)
