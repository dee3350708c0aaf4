"""The export bundle: one directory with `manifest.json` and the files it lists (no torch here).

`panda export` writes it and `panda run` / the runtime read it, on devices without torch. The
manifest records where the bundle came from (checkpoint, weight hashes, tool versions), what its
graphs take and give, and the sha256 and size of every file, so a missing or altered file is found
before anything runs. An export writes its new files under temporary names and replaces the
manifest last, atomically: a bundle whose export failed or was killed still opens as it was.

Hashing a 7B GGUF takes tens of seconds, so `.verified.json` remembers, per file, the sha256 this
machine last computed with the file's size, mtime, ctime and inode: a file whose stat still matches
is not read again, and any change (a write, a copy, another machine) hashes it again.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import socket
import tempfile
from collections.abc import Iterable, Sequence
from importlib import metadata
from pathlib import Path
from typing import Any

from panda_edge.errors import BundleError
from panda_edge.fileio import file_mode, write_json
from panda_edge.prompt import IMAGE_TOKEN, IMAGE_TOKEN_INDEX, ROLES, SEP, SEP2, SYSTEM_PROMPT

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
STAB_ONNX_FILE = "stab.onnx"
STAB_INT8_FILE = "stab.int8.onnx"  # TensorRT Q/DQ form
STAB_INT8_CPU_FILE = "stab.int8.cpu.onnx"  # ONNX Runtime CPU form (U8S8)
CALIBRATION_FILE = "calibration.npz"
PROMPT_FILE = "prompt.json"
TOKENIZER_FILE = "tokenizer.model"
VERIFIED_FILE = ".verified.json"  # this machine's hashes by file stat (not listed, not shipped)


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
    """Create the directory; a manifest already there stays valid until `StagedFiles.commit`."""
    bundle = Path(bundle)
    if bundle.exists() and not bundle.is_dir():
        raise BundleError(f"{bundle}: exists and is not a directory")
    bundle.mkdir(parents=True, exist_ok=True)
    return bundle


class StagedFiles:
    """An export's new files under temporary names in the bundle, made live with the new manifest.

    `path(name)` gives the temporary path to write `name` to; `commit` hashes them, renames them onto
    their names and writes the manifest; leaving the block without a commit (an error) deletes them.
    Until the commit the old manifest and the files it lists are untouched. A killed export leaves
    `.NAME.*.tmp` files behind, which no manifest lists.
    """

    def __init__(self, bundle: str | Path) -> None:
        self.bundle = start_bundle(bundle)
        self._paths: dict[str, Path] = {}
        self._records: dict[str, dict[str, Any]] = {}

    def __enter__(self) -> StagedFiles:
        return self

    def __exit__(self, *exc: object) -> None:
        for tmp in self._paths.values():
            tmp.unlink(missing_ok=True)
        self._paths = {}

    def path(self, name: str) -> Path:
        if name in self._paths:
            return self._paths[name]
        fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.bundle)
        os.close(fd)
        self._paths[name] = Path(tmp)
        return self._paths[name]

    def record(self, name: str) -> dict[str, Any]:
        """The staged file's size and sha256 (hashed once, also used by `commit`)."""
        if name not in self._records:
            self._records[name] = file_record(self._paths[name])
        return self._records[name]

    def commit(
        self, manifest: dict[str, Any], files: Iterable[str], known: dict[str, dict[str, Any]] | None = None
    ) -> dict[str, Any]:
        """Rename the staged files onto their names, then write the manifest listing `files`
        (`known`: records of files already verified, as for `write_manifest`)."""
        records = {name: self.record(name) for name in self._paths}
        mode = file_mode()
        for name, tmp in self._paths.items():
            os.chmod(tmp, mode)  # mkstemp makes 0600
            os.replace(tmp, self.bundle / name)
        self._paths = {}
        cache = VerifiedCache(self.bundle)
        for name, record in records.items():
            cache.remember(name, record["sha256"])
        cache.save()
        return write_manifest(self.bundle, manifest, files, known={**(known or {}), **records})


def _host_id() -> str:
    """This machine: /etc/machine-id where there is one, else the host name."""
    try:
        machine = Path("/etc/machine-id").read_text(encoding="ascii").strip()
    except (OSError, UnicodeDecodeError):
        machine = ""
    return machine or socket.gethostname()


class VerifiedCache:
    """`.verified.json`: name -> the sha256 this machine computed, with the file's stat at that time.

    A file whose size, mtime, ctime and inode all still match was not written since it was hashed
    here (ctime cannot be set back by a program), so its hash is taken from here. A cache from
    another machine, or one that cannot be read, is ignored; one that cannot be written is skipped.
    """

    def __init__(self, bundle: Path) -> None:
        self.path = bundle / VERIFIED_FILE
        self.bundle = bundle
        self.host = _host_id()
        self.entries: dict[str, dict[str, Any]] = {}
        self._changed = False
        try:
            data = json.loads(self.path.read_text(encoding="utf-8"))
        except (OSError, UnicodeDecodeError, json.JSONDecodeError):
            return
        if isinstance(data, dict) and data.get("host") == self.host and isinstance(data.get("files"), dict):
            self.entries = data["files"]

    @staticmethod
    def _stat(path: Path) -> dict[str, int]:
        st = path.stat()
        return {
            "size": st.st_size,
            "mtime_ns": st.st_mtime_ns,
            "ctime_ns": st.st_ctime_ns,
            "inode": st.st_ino,
        }

    def known_sha256(self, name: str) -> str | None:
        """The sha256 hashed here when the file's stat was what it is now; None: hash it."""
        entry = self.entries.get(name)
        if not isinstance(entry, dict):
            return None
        try:
            now = self._stat(self.bundle / name)
        except OSError:
            return None
        return entry.get("sha256") if {k: entry.get(k) for k in now} == now else None

    def remember(self, name: str, sha256: str) -> None:
        self.entries[name] = {**self._stat(self.bundle / name), "sha256": sha256}
        self._changed = True

    def save(self) -> None:
        if not self._changed:
            return
        with contextlib.suppress(OSError):  # a read-only bundle: its files are hashed again next time
            write_json(self.path, {"host": self.host, "files": dict(sorted(self.entries.items()))})
        self._changed = False


def record_files(
    bundle: str | Path, names: Iterable[str]
) -> tuple[dict[str, dict[str, Any]], dict[str, str]]:
    """Size and sha256 of each file, and how each was had: 'hashed', or 'unchanged' (the hash this
    machine computed when the file's stat was the same; see `VerifiedCache`)."""
    bundle = Path(bundle)
    cache = VerifiedCache(bundle)
    records, how = {}, {}
    for name in names:
        size = (bundle / name).stat().st_size
        sha = cache.known_sha256(name)
        how[name] = "hashed" if sha is None else "unchanged"
        if sha is None:
            sha = sha256_file(bundle / name)
            cache.remember(name, sha)
        records[name] = {"sha256": sha, "size": size}
    cache.save()
    return records, how


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

    `known` holds records already verified, used instead of hashing those files again; so are the
    hashes this machine made of files unchanged since (`record_files`).
    """
    bundle, known, files = Path(bundle), known or {}, sorted(files)
    records, _ = record_files(bundle, [name for name in files if name not in known])
    out = {
        "format_version": FORMAT_VERSION,
        **manifest,
        "files": {name: known.get(name) or records[name] for name in files},
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
    data, files, kept = extended(bundle, manifest, updates, new_files)
    return write_manifest(bundle, data, files, known=kept)


def extended(
    bundle: str | Path, manifest: dict[str, Any], updates: dict[str, Any], new_files: Iterable[str]
) -> tuple[dict[str, Any], list[str], dict[str, dict[str, Any]]]:
    """What `extend_manifest` writes: the manifest's fields, the files to list, the records kept."""
    bundle, new_files = Path(bundle), list(new_files)
    data = {k: v for k, v in manifest.items() if k not in ("format_version", "files")} | updates
    listed = manifest.get("files", {})
    kept = {n: r for n, r in listed.items() if n not in new_files and (bundle / n).is_file()}
    return data, [*kept, *new_files], kept


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
        verify_files(bundle, manifest)
    return manifest


def verify_files(bundle: str | Path, manifest: dict[str, Any]) -> dict[str, str]:
    """Every listed file must exist with its size and hash; returns name -> 'hashed' or 'unchanged'
    (not read again: this machine hashed it at this very stat, see `VerifiedCache`)."""
    bundle = Path(bundle)
    cache = VerifiedCache(bundle)
    how = {}
    try:
        for name, record in manifest["files"].items():
            how[name] = _verify_file(bundle, manifest, name, record, cache)
    finally:
        cache.save()  # what was hashed before a refusal need not be hashed again
    return how


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


def _verify_file(bundle: Path, manifest: dict[str, Any], name: str, record: Any, cache: VerifiedCache) -> str:
    path = checked_path(bundle, manifest, name, "'files'")
    if not isinstance(record, dict):
        raise BundleError(f"{bundle}: the manifest's record of {name} is not a size and hash; export again")
    if not path.is_file():
        raise BundleError(f"{bundle}: {name} is listed in the manifest but missing")
    changed = BundleError(
        f"{bundle}: {name} does not match its manifest hash (changed or corrupted); export again"
    )
    if path.stat().st_size != record.get("size"):
        raise changed
    if cache.known_sha256(name) == record.get("sha256"):
        return "unchanged"
    sha = sha256_file(path)
    if sha != record.get("sha256"):
        raise changed
    cache.remember(name, sha)
    return "hashed"
