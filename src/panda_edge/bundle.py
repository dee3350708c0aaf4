"""The export bundle: one directory with `manifest.json` and the files it lists (no torch here).

`panda export` writes it and `panda run` / the runtime read it, on devices without torch. The
manifest records where the bundle came from (checkpoint, weight hashes, tool versions), what its
graphs take and give, and the sha256 and size of every file, so a missing or altered file is found
before anything runs. The manifest is removed first and written last: a bundle whose export was
interrupted has no manifest and is refused as a whole.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from panda_edge.errors import BundleError
from panda_edge.fileio import write_json
from panda_edge.prompt import IMAGE_TOKEN, IMAGE_TOKEN_INDEX, ROLES, SEP, SEP2, SYSTEM_PROMPT

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
STAB_ONNX_FILE = "stab.onnx"
STAB_INT8_FILE = "stab.int8.onnx"  # TensorRT Q/DQ form
STAB_INT8_CPU_FILE = "stab.int8.cpu.onnx"  # ONNX Runtime CPU form (U8S8)
CALIBRATION_FILE = "calibration.npz"
PROMPT_FILE = "prompt.json"
TOKENIZER_FILE = "tokenizer.model"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def file_record(path: str | Path) -> dict[str, Any]:
    path = Path(path)
    return {"sha256": sha256_file(path), "size": path.stat().st_size}


def tool_versions(packages: Iterable[str] = ("torch", "onnx", "onnxruntime", "panda-edge")) -> dict[str, str]:
    """Installed versions, read from package metadata (nothing is imported)."""
    versions = {}
    for name in packages:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = "not installed"
    if versions.get("panda-edge") == "not installed":
        from panda_edge import __version__

        versions["panda-edge"] = __version__
    return versions


def prompt_settings(video_frames: int) -> dict[str, Any]:
    """What a runtime needs to build the official `videopanda_v1` prompt around the visual tokens."""
    return {
        "template": "videopanda_v1",
        "system": SYSTEM_PROMPT,
        "roles": list(ROLES),
        "sep": SEP,
        "sep2": SEP2,
        "image_token": IMAGE_TOKEN,
        "image_token_index": IMAGE_TOKEN_INDEX,
        "frames": video_frames,
        "split_at_image_token": True,
        "bos_on_first_chunk_only": True,
        "tokenizer": TOKENIZER_FILE,
    }


def start_bundle(bundle: str | Path) -> Path:
    """Create the directory and remove an old manifest, so a half-written bundle is never valid."""
    bundle = Path(bundle)
    if bundle.exists() and not bundle.is_dir():
        raise BundleError(f"{bundle}: exists and is not a directory")
    bundle.mkdir(parents=True, exist_ok=True)
    (bundle / MANIFEST_FILE).unlink(missing_ok=True)
    return bundle


def previous_manifest(bundle: str | Path, weights: dict[str, Any]) -> dict[str, Any] | None:
    """The bundle's current manifest, to extend with another part; None when there is none.

    `weights` are the source checkpoint's file records: a bundle exported from other weights is
    refused, so one bundle never mixes two models' parts.
    """
    if not (Path(bundle) / MANIFEST_FILE).is_file():
        return None
    manifest = load_manifest(bundle, verify=False)
    theirs = (manifest.get("source") or {}).get("weights")
    if theirs is not None and theirs != weights:
        raise BundleError(
            f"{bundle}: holds an export of another checkpoint ({manifest['source'].get('checkpoint')}); "
            "choose a new --out directory or delete this one"
        )
    return manifest


def exported_from(manifest: dict[str, Any], weight_files: Sequence[Path]) -> bool | None:
    """Whether `weight_files` are the weights the bundle was exported from (None: it does not say).

    Content, not path: a moved checkpoint still matches. Names and sizes are compared before
    anything is hashed, so other weights are told apart without reading 13 GB.
    """
    theirs = (manifest.get("source") or {}).get("weights")
    if theirs is None:
        return None
    sizes = {p.name: p.stat().st_size for p in weight_files}
    if sizes != {name: record.get("size") for name, record in theirs.items()}:
        return False
    return all(sha256_file(p) == theirs[p.name].get("sha256") for p in weight_files)


def write_manifest(
    bundle: str | Path,
    manifest: dict[str, Any],
    files: Iterable[str],
    known: dict[str, dict[str, Any]] | None = None,
) -> dict[str, Any]:
    """Hash `files` (names inside `bundle`) into the manifest and write it, last and atomically.

    `known` holds records already verified, used instead of hashing those files again.
    """
    bundle, known = Path(bundle), known or {}
    out = {
        "format_version": FORMAT_VERSION,
        **manifest,
        "files": {name: known.get(name) or file_record(bundle / name) for name in sorted(files)},
    }
    write_json(bundle / MANIFEST_FILE, out)
    return out


def extend_manifest(
    bundle: str | Path, manifest: dict[str, Any], updates: dict[str, Any], new_files: Iterable[str]
) -> dict[str, Any]:
    """`manifest` (as loaded and verified) with `updates` and `new_files` hashed in, written atomically.

    Files it already lists keep their records, as they were verified when it was loaded: adding a
    graph to a 7B bundle does not hash its 13 GB of GGUF again. Files since removed are dropped.
    """
    bundle, new_files = Path(bundle), list(new_files)
    data = {k: v for k, v in manifest.items() if k not in ("format_version", "files")} | updates
    listed = manifest.get("files", {})
    kept = {n: r for n, r in listed.items() if n not in new_files and (bundle / n).is_file()}
    return write_manifest(bundle, data, [*kept, *new_files], known=kept)


def load_manifest(bundle: str | Path, verify: bool = True) -> dict[str, Any]:
    """Read `bundle/manifest.json`; with `verify`, every listed file must exist with its size and hash."""
    bundle = Path(bundle)
    path = bundle / MANIFEST_FILE
    if not bundle.is_dir():
        raise BundleError(f"{bundle}: no such bundle directory")
    if not path.is_file():
        raise BundleError(f"{bundle}: no {MANIFEST_FILE}; not an export bundle, or its export did not finish")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BundleError(f"{path}: not a readable manifest ({exc})") from None
    if not isinstance(manifest, dict) or not isinstance(manifest.get("files"), dict):
        raise BundleError(f"{path}: not a panda-edge manifest (no 'files')")
    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise BundleError(
            f"{path}: bundle format version {version!r}; this panda-edge reads version {FORMAT_VERSION}, "
            "export the bundle again"
        )
    if verify:
        for name, record in manifest["files"].items():
            _verify_file(bundle, manifest, name, record)
    return manifest


def bundle_file(bundle: str | Path, manifest: dict[str, Any], field: str, default: str | None = None) -> Path:
    """The file that the manifest's `field` ('vision.file', 'llm.gguf.q8_0.file') names, checked.

    `default` is the name when the manifest lacks the field; without one, a missing field is a
    BundleError naming it. `manifest` is as `load_manifest` returned it (hashes verified).
    """
    name = manifest_value(manifest, field, bundle) if default is None else _get(manifest, field, default)
    return checked_path(bundle, manifest, name, f"'{field}'")


def checked_path(bundle: str | Path, manifest: dict[str, Any], name: Any, field: str) -> Path:
    """The one check for every file name a manifest holds, its `files` keys included.

    The name must be relative, stay inside the bundle and be listed in `files`, so the file opened
    is one whose size and hash `load_manifest` verified: a name of `../x/stab.onnx`, or one the
    manifest never hashed, is refused.
    """
    bundle = Path(bundle)
    if not isinstance(name, str) or not name:
        raise BundleError(f"{bundle}: the manifest's {field} is {name!r}, not a file name; export again")
    if Path(name).is_absolute() or ".." in Path(name).parts or "\\" in name:
        raise BundleError(f"{bundle}: the manifest's {field} names a file outside the bundle ({name})")
    if name not in manifest.get("files", {}):
        raise BundleError(
            f"{bundle}: the manifest's {field} names {name}, which its 'files' does not list (no hash to "
            "check it against); export again"
        )
    return bundle / name


def _get(manifest: dict[str, Any], key: str, default: Any) -> Any:
    value: Any = manifest
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return default
        value = value[part]
    return value


def manifest_value(manifest: dict[str, Any], key: str, bundle: str | Path) -> Any:
    """`manifest[a][b]...` for key 'a.b...', or a BundleError naming the key the manifest lacks."""
    value: Any = manifest
    for i, part in enumerate(key.split(".")):
        if not isinstance(value, dict) or part not in value:
            missing = ".".join(key.split(".")[: i + 1])
            raise BundleError(
                f"{bundle}: the manifest has no '{missing}' (an older or hand-edited manifest); export again"
            )
        value = value[part]
    return value


def _verify_file(bundle: Path, manifest: dict[str, Any], name: str, record: Any) -> None:
    path = checked_path(bundle, manifest, name, "'files'")
    if not isinstance(record, dict):
        raise BundleError(f"{bundle}: the manifest's record of {name} is not a size and hash; export again")
    if not path.is_file():
        raise BundleError(f"{bundle}: {name} is listed in the manifest but missing")
    if path.stat().st_size != record.get("size") or sha256_file(path) != record.get("sha256"):
        raise BundleError(
            f"{bundle}: {name} does not match its manifest hash (changed or corrupted); export again"
        )
