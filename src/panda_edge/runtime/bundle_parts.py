"""Opening a bundle for the runtime: pick its parts and check that they fit together (no torch).

A bundle can be assembled from several exports, so before anything runs we check what would
otherwise fail late or silently: every file's hash (the manifest), the vision graph's token width
against the GGUF's embedding size, the tokenizer's vocabulary against the GGUF's, and the graph's
frame count against the prompt's `<image>` places.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from panda_edge.backends import FP32, ORT, check_precision
from panda_edge.bundle import VISION, Manifest
from panda_edge.errors import BundleError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundleParts:
    """The files a runtime session uses, resolved and hash-checked."""

    root: Path
    manifest: Manifest
    gguf_type: str
    gguf: Path
    vision_precision: str
    vision_onnx: Path
    tokenizer: Path
    frames: int

    @property
    def hidden(self) -> int:
        return self.manifest.config.llm.hidden_size

    @property
    def verified(self) -> dict[str, str]:
        """name -> 'hashed' or 'unchanged' (this machine hashed it at the same stat: not read again)."""
        return self.manifest.verified


def open_bundle(
    bundle: str | Path, gguf_type: str | None = None, precision: str = FP32, backend: str = ORT
) -> BundleParts:
    """Resolve the bundle's GGUF (`gguf_type`, or the preferred one it holds) and vision graph.

    Every file comes through the Manifest: inside the bundle and hash-checked, or refused. With
    `backend` trt, `vision_onnx` is the graph its engine was built from (memory estimates, reports);
    the engine itself is chosen when the backend starts.
    """
    root = Path(bundle)
    manifest = Manifest.load(root)
    check_precision(backend, precision)
    if not manifest.has_graph(VISION):
        raise BundleError(f"{root}: no vision graph; run panda export --target onnx --out {root}")
    gguf = manifest.gguf(gguf_type)
    onnx = manifest.vision_graph(backend, precision)
    tokenizer = manifest.tokenizer_path()
    frames = manifest.config.vision.video_frames
    prompt = manifest.prompt_path()
    if prompt is not None:
        frames = int(_read_json(prompt).get("frames", frames))
    width, hidden = manifest.token_width, manifest.config.llm.hidden_size
    if width != hidden:
        raise BundleError(
            f"{root}: the vision graph gives tokens of width {width} but the model's LLM is "
            f"{hidden} wide; export both parts from one checkpoint"
        )
    verified = manifest.verified
    hashed = sum(how == "hashed" for how in verified.values())
    log.info("bundle %s: vision %s (%s), decoder %s", root, onnx.name, precision, gguf.file)
    log.debug(
        "%d files checked: %d hashed now, %d unchanged since hashed",
        len(verified),
        hashed,
        len(verified) - hashed,
    )
    return BundleParts(
        root=root,
        manifest=manifest,
        gguf_type=gguf.type,
        gguf=manifest.path(gguf.file),
        vision_precision=precision,
        vision_onnx=onnx,
        tokenizer=tokenizer,
        frames=frames,
    )


def _read_json(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(data, dict):
        raise BundleError(f"{path}: not a JSON object")
    return data


def check_fit(parts: BundleParts, n_embd: int, n_vocab: int, tokenizer_vocab: int, graph_frames: int) -> None:
    """The loaded parts against each other; one error naming every mismatch."""
    problems = []
    if n_embd != parts.hidden:
        problems.append(
            f"the GGUF's embedding size is {n_embd}, the vision graph's tokens are {parts.hidden} wide"
        )
    if n_vocab != tokenizer_vocab:
        problems.append(f"the GGUF has {n_vocab} tokens, {parts.tokenizer.name} has {tokenizer_vocab}")
    if graph_frames != parts.frames:
        problems.append(
            f"the vision graph takes {graph_frames} frames, the prompt has {parts.frames} <image> places"
        )
    if problems:
        raise BundleError(
            f"{parts.root}: its parts do not fit together ({'; '.join(problems)}); "
            "export them again from one checkpoint"
        )
