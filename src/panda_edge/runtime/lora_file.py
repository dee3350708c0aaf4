"""A `--lora` GGUF checked against the bundle it is applied to, before llama.cpp loads anything.

llama.cpp applies any LoRA GGUF whose tensors fit the base: an adapter of the base checkpoint given
with the bundle of the checkpoint merged from it adds the update twice, silently. `panda export
--lora` writes the adapter's base checkpoint digest (`LORA_BASE_KEY`); the bundle's manifest records
the weights it was exported from (`Source.checkpoint_sha256`): they must be one. A LoRA GGUF without
the key (llama.cpp's own converter) cannot be checked and is taken with a warning. Reads the GGUF's
header with the `gguf` package (numpy, no torch).
"""

from __future__ import annotations

import logging
from pathlib import Path

from panda_edge.bundle import LORA_BASE_KEY, Manifest
from panda_edge.errors import PandaError

log = logging.getLogger(__name__)


def gguf_strings(path: str | Path, keys: tuple[str, ...]) -> dict[str, str | None]:
    """The string values of `keys` in a GGUF's header (None: absent); a file that is not a GGUF is a
    PandaError."""
    import gguf

    try:
        reader = gguf.GGUFReader(path)
    except (OSError, ValueError, KeyError, IndexError) as exc:
        raise PandaError(f"--lora {path}: not a GGUF file ({exc})") from None
    out: dict[str, str | None] = {}
    for key in keys:
        field = reader.fields.get(key)
        if field is None or not field.data:
            out[key] = None
            continue
        try:
            out[key] = bytes(field.parts[field.data[0]]).decode("utf-8")
        except (UnicodeDecodeError, TypeError, IndexError):
            out[key] = None
    return out


def check_lora(path: str | Path, manifest: Manifest) -> str | None:
    """Refuse a `--lora` file that is not a llama.cpp LoRA adapter, or one trained on other weights
    than the bundle's; returns the adapter's base digest (None: it records none, a warning is logged)."""
    found = gguf_strings(path, ("general.type", "adapter.type", LORA_BASE_KEY))
    kind, adapter = found["general.type"], found["adapter.type"]
    if kind != "adapter" or adapter != "lora":
        raise PandaError(
            f"--lora {path}: not a LoRA adapter GGUF (general.type {kind!r}, adapter.type {adapter!r}); "
            "give the lora.gguf that panda export --target gguf --lora writes"
        )
    base = found[LORA_BASE_KEY]
    if not base:
        log.warning(
            "--lora %s records no base checkpoint (%s): whether it belongs to this bundle's weights "
            "could not be checked",
            path,
            LORA_BASE_KEY,
        )
        return None
    source = manifest.source
    bundle_base = None if source is None else source.checkpoint_sha256
    if bundle_base is None:
        log.warning(
            "%s: the manifest records no source weights: whether --lora %s belongs to them could not "
            "be checked",
            manifest.root,
            path,
        )
    elif bundle_base != base:
        raise PandaError(
            f"--lora {path} was trained on other weights (base sha256 {base[:12]}) than bundle "
            f"{manifest.root} was exported from ({bundle_base[:12]}; a checkpoint merged with the adapter "
            "would get its update twice): export the adapter against this bundle's checkpoint, or run "
            "it on the bundle of its base checkpoint"
        )
    return base


def describe_lora(path: str | Path, sha256: str) -> str:
    """How a report names an applied adapter: its file name and sha256 (short)."""
    return f"{Path(path).name} (sha256 {sha256[:12]})"
