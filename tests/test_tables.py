"""Each backend fact is written once, in `panda_edge.backends`, and plan and run agree on it.

Like the import-layer test, every module is read with `ast`: a tuple, list, set or dict (keys) of
two or more names from one of the tables, written anywhere in src but the table module, is a second
copy of that table and fails here with its file and line. A single name (a default, a comparison)
is not a table and is allowed.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from panda_edge import backends
from panda_edge.backends import KV_CACHE_TYPES, check_kv_cache

SRC = Path(__file__).resolve().parents[1] / "src"
TABLE_MODULE = SRC / "panda_edge" / "backends.py"

# table -> its names, as a module would spell them
TABLES: dict[str, frozenset[str]] = {
    "GGUF types": frozenset(backends.GGUF_TYPES),
    "KV cache types": frozenset(backends.KV_CACHE_TYPES),
    "vision backends": frozenset(backends.VISION_BACKENDS),
    "precisions": frozenset(p for names in backends.PRECISIONS.values() for p in names),
    "TensorRT profiles": frozenset(backends.TRT_TARGETS),
}


def _literal_strings(node: ast.AST) -> list[str]:
    """The string constants a collection literal spells out (a dict: its keys)."""
    if isinstance(node, ast.Dict):
        items = node.keys
    elif isinstance(node, ast.Tuple | ast.List | ast.Set):
        items = node.elts
    else:
        return []
    return [n.value for n in items if isinstance(n, ast.Constant) and isinstance(n.value, str)]


# (file under src/panda_edge, table): names that are something else, with why.
OTHER_MEANINGS: dict[tuple[str, str], str] = {
    ("model/loading.py", "precisions"): "the PyTorch reference's dtypes (with bf16), not vision graphs",
    ("bench/vision.py", "vision backends"): "the benchmark's rows (with ort_int8), and pairs of them",
}


def table_copies(source: str, filename: str) -> list[str]:
    """`file:line: ...` for each literal that lists two or more names of one table."""
    problems = []
    for node in ast.walk(ast.parse(source, filename)):
        names = set(_literal_strings(node))
        for table, known in TABLES.items():
            if any(filename.endswith(f"panda_edge/{path}") and t == table for path, t in OTHER_MEANINGS):
                continue
            spelled = names & known
            if len(spelled) >= 2:
                problems.append(
                    f"{filename}:{node.lineno}: {', '.join(sorted(spelled))} spell out the {table}; "
                    "read panda_edge.backends instead"
                )
    return problems


def test_no_table_is_spelled_out_outside_the_table_module() -> None:
    files = sorted(p for p in (SRC / "panda_edge").rglob("*.py") if p != TABLE_MODULE)
    assert len(files) > 50
    problems = [p for f in files for p in table_copies(f.read_text(encoding="utf-8"), str(f))]
    assert not problems, "\n".join(problems)


def test_the_check_finds_a_copied_table() -> None:
    """The check above can fail: the copies this issue found are each reported."""
    copies = {
        "plan": 'KV_TYPES = {"f32": "F32", "f16": "F16", "q8_0": "Q8_0", "q4_0": "Q4_0"}',
        "runtime": 'GGUF_PREFERENCE = ("q8_0", "f16", "q5_k_m", "q4_k_m", "bf16", "f32")',
        "precisions": 'ENGINE_PRECISIONS = ("fp16", "int8", "fp32")',
        "backends": 'VISION_BACKENDS = ["ort", "trt", "torch"]',
        "profiles": 'PROFILES = {"8.5": 1, "10": 2}',
    }
    for name, source in copies.items():
        assert table_copies(source, name), name
    assert table_copies('DEFAULT = "f16"\nif kv == "q8_0": pass', "single") == []


@pytest.fixture(scope="module")
def tiny_gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A bundle with the tiny model's f32 GGUF."""
    pytest.importorskip("llama_cpp")
    from panda_edge.export.llm_gguf.export_gguf import export_gguf

    bundle = tmp_path_factory.mktemp("gguf")
    export_gguf("tiny", bundle, "f32")
    return bundle


@pytest.mark.parametrize("kv_cache", list(KV_CACHE_TYPES))
def test_plan_and_run_accept_the_same_kv_cache_types(kv_cache: str, tiny_gguf: Path) -> None:
    """Every KV cache type `panda plan` sizes, llama.cpp loads as `panda run` asks it to (a quantized
    V cache with flash attention: without it llama.cpp refuses to create the context)."""
    from panda_edge.plan.footprint import model_shape
    from panda_edge.plan.ggml import kv_cache_bytes
    from panda_edge.runtime.llm.llamacpp import load_llama

    llm = model_shape(bundle=tiny_gguf).llm
    assert kv_cache_bytes(llm, 256, kv_cache) > 0
    llama = load_llama(tiny_gguf / "llm.f32.gguf", n_ctx=256, n_batch=32, threads=1, kv_cache=kv_cache)
    try:
        llama.eval([1, 5, 7, 9])
        assert llama.n_tokens == 4
    finally:
        llama.close()
    assert check_kv_cache(kv_cache).flash_attn == (kv_cache not in ("f32", "f16"))
