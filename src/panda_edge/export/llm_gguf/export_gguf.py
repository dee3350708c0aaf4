"""`panda export --target gguf`: checkpoint -> `BUNDLE/llm.<type>.gguf` + manifest entry.

The bundle may already hold the ONNX export (or other GGUF types): the manifest is read first and
extended, never replaced. As with every export, new files are written under temporary names and the
manifest is replaced last, so a bundle that worked keeps working when the export fails or is killed.
"""

from __future__ import annotations

import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from panda_edge.backends import DEFAULT_GGUF_TYPE, KQUANT_SOURCE, check_gguf_type
from panda_edge.bundle import (
    PROMPT_FILE,
    TOKENIZER_FILE,
    FileRecord,
    Manifest,
    Source,
    StagedFiles,
    file_record,
    previous_manifest,
    prompt_settings,
    tool_versions,
)
from panda_edge.config import ModelConfig
from panda_edge.errors import CheckpointError
from panda_edge.export.llm_gguf.names import (
    ARCH_NAME,
    GGUF_TYPES,
    GgufType,
    gguf_file_name,
)
from panda_edge.fileio import write_json

TOOLS = ("torch", "onnx", "onnxruntime", "gguf", "llama_cpp_python", "panda-edge")


def get_gguf_type(name: str) -> GgufType:
    return GGUF_TYPES[check_gguf_type(name).name]


def gguf_plan(checkpoint: str | Path, gguf_type: str = DEFAULT_GGUF_TYPE) -> list[dict[str, Any]]:
    """What `export_gguf` would write, read from the headers only (`--dry-run`)."""
    from panda_edge.export.llm_gguf.convert import plan_tensors

    gtype = get_gguf_type(gguf_type)
    _, config, files = _open_checkpoint(checkpoint)
    return [e.to_dict() for e in plan_tensors(files, config.llm, _writer_type(gtype))]


def _writer_type(gtype: GgufType) -> GgufType:
    """The type gguf-py writes: the target itself, or the K-quant's source."""
    return gtype if gtype.tensor_type is not None else GGUF_TYPES[KQUANT_SOURCE]


def _open_checkpoint(checkpoint: str | Path):
    from panda_edge.config import read_config
    from panda_edge.model.checkpoint import weight_files

    directory = _resolve(checkpoint)
    config = read_config(directory)
    return directory, config, weight_files(directory)


def _resolve(checkpoint: str | Path) -> Path:
    if str(checkpoint) == "tiny":
        from panda_edge.assets import tiny_checkpoint

        return tiny_checkpoint()
    directory = Path(checkpoint)
    if not directory.is_dir():
        raise CheckpointError(f"{checkpoint}: no such checkpoint directory")
    return directory


def export_gguf(
    checkpoint: str | Path,
    out_dir: str | Path,
    gguf_type: str = DEFAULT_GGUF_TYPE,
    on_step: Callable[[str], None] | None = None,
    on_tensor: Callable[[int, int], None] | None = None,
    permute: bool = True,
) -> dict[str, Any]:
    """Write `out_dir/llm.<type>.gguf` from `checkpoint` ('tiny' or a directory); returns the manifest."""
    from panda_edge.export.llm_gguf.convert import plan_tensors, write_gguf
    from panda_edge.export.llm_gguf.quantize import kquantize, tensor_types
    from panda_edge.export.llm_gguf.vocab import read_vocab

    step = on_step or (lambda message: None)
    gtype = get_gguf_type(gguf_type)
    if gtype.llama_ftype is not None:
        from panda_edge.optional import llama_cpp

        llama_cpp()  # fail before any work when the quantizer is missing
    directory, config, files = _open_checkpoint(checkpoint)
    tokenizer = directory / TOKENIZER_FILE
    if not tokenizer.is_file():
        raise CheckpointError(f"{directory}: no {TOKENIZER_FILE}; the GGUF needs its vocabulary")
    vocab = read_vocab(tokenizer)
    plan = plan_tensors(files, config.llm, _writer_type(gtype), permute=permute)
    weights = {p.name: file_record(p) for p in files}  # hashed once: the 7B weights are 13 GB
    previous = previous_manifest(out_dir, weights)
    name = gguf_file_name(gtype.name)
    progress = (lambda done: on_tensor(done, len(plan))) if on_tensor is not None else None
    with StagedFiles(out_dir) as staged:
        final_tmp = staged.path(name)
        if gtype.llama_ftype is None:
            step(f"writing {name} ({len(plan)} tensors, one at a time)")
            write_gguf(final_tmp, plan, config.llm, gtype, vocab, on_tensor=progress)
        else:
            source_type = _writer_type(gtype)
            src_tmp = final_tmp.with_name(final_tmp.name + f".{source_type.name}")
            try:  # the intermediate never gets a valid name and is always deleted
                step(f"writing a {source_type.name} GGUF for llama.cpp's quantizer ({len(plan)} tensors)")
                write_gguf(src_tmp, plan, config.llm, source_type, vocab, on_tensor=progress)
                step(f"quantizing to {gtype.name} with llama.cpp")
                kquantize(src_tmp, final_tmp, gtype.llama_ftype)
            finally:
                src_tmp.unlink(missing_ok=True)
        types = tensor_types(final_tmp)
        counts: dict[str, int] = {}
        for t in types.values():
            counts[t] = counts.get(t, 0) + 1
        step("hashing the bundle")
        entry = {
            "file": name,
            "type": gtype.name,
            "architecture": ARCH_NAME,
            "tensor_count": len(types),
            "tensor_types": dict(sorted(counts.items())),
            "qk_permuted": permute,
            **staged.record(name),
        }
        return _write_manifest(staged, previous, directory, config, weights, entry)


def _write_manifest(
    staged: StagedFiles,
    previous: Manifest,
    directory: Path,
    config: ModelConfig,
    weights: dict[str, Any],
    entry: dict[str, Any],
) -> dict[str, Any]:
    bundle = staged.bundle
    if not (bundle / TOKENIZER_FILE).is_file():
        shutil.copyfile(directory / TOKENIZER_FILE, staged.path(TOKENIZER_FILE))
    if not (bundle / PROMPT_FILE).is_file():
        write_json(staged.path(PROMPT_FILE), prompt_settings(config.vision.video_frames))
    source = Source(str(directory.resolve()), {n: FileRecord(**r) for n, r in weights.items()})
    manifest, files = previous.with_gguf(entry, source, config, {TOKENIZER_FILE, PROMPT_FILE})
    return staged.commit({**manifest, "tools": {**previous.tools, **tool_versions(TOOLS)}}, files)
