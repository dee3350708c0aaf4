"""Opening a bundle for the runtime: pick its parts and check that they fit together (no torch).

A bundle can be assembled from several exports, so before anything runs we check what would
otherwise fail late or silently: every file's hash (the manifest), the vision graph's token width
against the GGUF's embedding size, the tokenizer's vocabulary against the GGUF's, and the graph's
frame count against the prompt's `<image>` places.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from panda_edge.backends import GGUF_PREFERENCE, INT8, check_precision
from panda_edge.bundle import TOKENIZER_FILE, bundle_file, load_manifest, manifest_value, verify_files
from panda_edge.errors import BundleError

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class BundleParts:
    """The files a runtime session uses, resolved and hash-checked."""

    root: Path
    manifest: dict[str, Any]
    gguf_type: str
    gguf: Path
    vision_precision: str
    vision_onnx: Path
    tokenizer: Path
    frames: int
    # name -> 'hashed' or 'unchanged' (this machine hashed it at the same stat: not read again)
    verified: dict[str, str] = field(default_factory=dict)

    @property
    def hidden(self) -> int:
        return int(self.manifest["model"]["llm"]["hidden_size"])


def open_bundle(
    bundle: str | Path, gguf_type: str | None = None, precision: str = "fp32", backend: str = "ort"
) -> BundleParts:
    """Resolve the bundle's GGUF (`gguf_type`, or the preferred one it holds) and vision graph.

    Every file comes through `bundle_file`: inside the bundle and hash-checked, or refused. With
    `backend` trt, `vision_onnx` is the graph its engine was built from (memory estimates, reports);
    the engine itself is chosen when the backend starts.
    """
    root = Path(bundle)
    manifest = load_manifest(root, verify=False)
    verified = verify_files(root, manifest)
    check_precision(backend, precision)
    if "vision" not in manifest:
        raise BundleError(f"{root}: no vision graph; run panda export --target onnx --out {root}")
    ggufs = (manifest.get("llm") or {}).get("gguf") or {}
    if not ggufs:
        raise BundleError(f"{root}: no GGUF decoder; run panda export --target gguf --out {root}")
    if gguf_type is None:
        gguf_type = next(t for t in (*GGUF_PREFERENCE, *ggufs) if t in ggufs)
    elif gguf_type not in ggufs:
        raise BundleError(
            f"{root}: no {gguf_type} GGUF (it holds {', '.join(sorted(ggufs))}); "
            f"run panda export --target gguf --gguf-type {gguf_type} --out {root}"
        )
    if precision == INT8:
        int8 = manifest.get("vision_int8")
        if not int8:
            raise BundleError(f"{root}: no INT8 vision graph; run panda calibrate --bundle {root}")
        onnx = bundle_file(
            root, manifest, "vision_int8.cpu_file" if "cpu_file" in int8 else "vision_int8.file"
        )
    else:
        onnx = bundle_file(root, manifest, "vision.file")
    gguf = bundle_file(root, manifest, f"llm.gguf.{gguf_type}.file")
    tokenizer = bundle_file(root, manifest, "tokenizer", default=TOKENIZER_FILE)
    frames = int(manifest_value(manifest, "model.vision.video_frames", root))
    if manifest.get("prompt"):
        frames = int(_read_json(bundle_file(root, manifest, "prompt")).get("frames", frames))
    width = int(manifest_value(manifest, "vision.outputs.visual_tokens.shape", root)[-1])
    hidden = int(manifest_value(manifest, "model.llm.hidden_size", root))
    if width != hidden:
        raise BundleError(
            f"{root}: the vision graph gives tokens of width {width} but the model's LLM is "
            f"{hidden} wide; export both parts from one checkpoint"
        )
    hashed = sum(how == "hashed" for how in verified.values())
    log.info("bundle %s: vision %s (%s), decoder %s", root, onnx.name, precision, gguf.name)
    log.debug(
        "%d files checked: %d hashed now, %d unchanged since hashed",
        len(verified),
        hashed,
        len(verified) - hashed,
    )
    return BundleParts(
        root=root,
        manifest=manifest,
        gguf_type=gguf_type,
        gguf=gguf,
        vision_precision=precision,
        vision_onnx=onnx,
        tokenizer=tokenizer,
        frames=frames,
        verified=verified,
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
