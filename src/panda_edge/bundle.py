"""The export bundle: one directory with `manifest.json` and the files it lists (no torch here).

`panda export` writes it and `panda run` / the runtime read it, on devices without torch. The
manifest records where the bundle came from (checkpoint, weight hashes, tool versions), what its
graphs take and give, and the sha256 and size of every file, so a missing or altered file is found
before anything runs. An export writes its new files under temporary names and replaces the
manifest last, atomically: a bundle whose export failed or was killed still opens as it was.

Readers and writers see the manifest as a `Manifest` (one dataclass per section, parsed and checked
once) and ask it their questions: which GGUF, which vision graph for a backend and precision, which
engines, the model configuration. No module outside this one indexes the JSON.

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
from dataclasses import dataclass, field, replace
from importlib import metadata
from pathlib import Path
from typing import Any

from panda_edge.backends import GGUF_PREFERENCE, INT8, TRT, check_precision, trt_target
from panda_edge.config import LlmConfig, ModelConfig, VisionConfig
from panda_edge.errors import BundleError
from panda_edge.fileio import file_mode, write_json
from panda_edge.prompt import IMAGE_TOKEN, IMAGE_TOKEN_INDEX, ROLES, SEP, SEP2, SYSTEM_PROMPT
from panda_edge.token_layout import FRAMES, VISUAL_TOKENS

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
STAB_ONNX_FILE = "stab.onnx"
STAB_INT8_FILE = "stab.int8.onnx"  # TensorRT Q/DQ form
STAB_INT8_CPU_FILE = "stab.int8.cpu.onnx"  # ONNX Runtime CPU form (U8S8)
CALIBRATION_FILE = "calibration.npz"
PROMPT_FILE = "prompt.json"
TOKENIZER_FILE = "tokenizer.model"
VERIFIED_FILE = ".verified.json"  # this machine's hashes by file stat (not listed, not shipped)
# The GGUF key of a LoRA GGUF (panda export --lora) holding its base checkpoint's `checkpoint_digest`:
# the runtime compares it with the bundle's source before applying the adapter.
LORA_BASE_KEY = "panda.base_checkpoint_sha256"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def checkpoint_digest(weights: Iterable[tuple[str, str]]) -> str:
    """One digest for a checkpoint's weights, from (file name, file sha256) in the index's order: sha256
    over each name and sha256. What an adapter records as `base_checkpoint_sha256` and what a bundle's
    `source.weights` give (`Source.checkpoint_sha256`), so the two can be compared."""
    digest = hashlib.sha256()
    for name, sha256 in weights:
        digest.update(f"{name} {sha256}\n".encode())
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


def previous_manifest(bundle: str | Path, weights: dict[str, Any]) -> Manifest:
    """The bundle's current manifest, to extend with another part (`Manifest.empty` when there is none).

    `weights` are the source checkpoint's file records: a bundle exported from other weights is
    refused, so one bundle never mixes two models' parts.
    """
    if not (Path(bundle) / MANIFEST_FILE).is_file():
        return Manifest.empty(bundle)
    manifest = Manifest.load(bundle, verify=False)
    source = manifest.source
    if source is not None and source.weights is not None and source.to_dict()["weights"] != weights:
        raise BundleError(
            f"{bundle}: holds an export of another checkpoint ({source.checkpoint}); "
            "choose a new --out directory or delete this one"
        )
    return manifest


def exported_from(manifest: Manifest, weight_files: Sequence[Path]) -> bool | None:
    """Whether `weight_files` are the weights the bundle was exported from (None: it does not say).

    Content, not path: a moved checkpoint still matches. Names and sizes are compared before
    anything is hashed, so other weights are told apart without reading 13 GB.
    """
    theirs = None if manifest.source is None else manifest.source.weights
    if theirs is None:
        return None
    sizes = {p.name: p.stat().st_size for p in weight_files}
    if sizes != {name: record.size for name, record in theirs.items()}:
        return False
    return all(sha256_file(p) == theirs[p.name].sha256 for p in weight_files)


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


# --- The manifest, typed ----------------------------------------------------------------------------

# The sections that hold a vision graph; the TensorRT targets name them (backends.TrtTarget.graphs).
VISION, VISION_FP16, VISION_INT8 = "vision", "vision_fp16", "vision_int8"
ENGINES = "engines"


@dataclass(frozen=True)
class FileRecord:
    """A listed file's size and sha256, as `load_manifest` verified them."""

    sha256: str
    size: int

    def to_dict(self) -> dict[str, Any]:
        return {"sha256": self.sha256, "size": self.size}


@dataclass(frozen=True)
class Source:
    """The checkpoint a bundle was exported from: its path then, and its weight files' records."""

    checkpoint: str | None
    weights: dict[str, FileRecord] | None

    def to_dict(self) -> dict[str, Any]:
        weights = None if self.weights is None else {n: r.to_dict() for n, r in self.weights.items()}
        return {"checkpoint": self.checkpoint, "weights": weights}

    @property
    def checkpoint_sha256(self) -> str | None:
        """The source weights' `checkpoint_digest` (None: the manifest does not record them)."""
        if self.weights is None:
            return None
        return checkpoint_digest((name, record.sha256) for name, record in self.weights.items())


@dataclass(frozen=True)
class Graph:
    """One vision graph section (`vision`, `vision_fp16`, `vision_int8`): its file, the TensorRT profile
    it was exported for and its inputs and outputs; `fields` is the section as written (reports)."""

    section: str
    file: str
    profile: str | None
    inputs: dict[str, Any] | None
    outputs: dict[str, Any] | None
    cpu_file: str | None  # vision_int8: the ONNX Runtime (U8S8) form; `file` is TensorRT's Q/DQ form
    tensorrt: str | None  # the TensorRT release the profile was checked against
    opset: int | None
    fields: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.fields)


@dataclass(frozen=True)
class FormScore:
    """How close one INT8 form's tokens are to the fp32 graph's (cosine per token)."""

    cosine_mean: float
    cosine_min: float


@dataclass(frozen=True)
class GroupReport:
    """One group of layers the calibration quantized, or kept in float, and why."""

    name: str
    nodes: int
    precision: str  # int8, or float
    alone_cosine_mean: float  # the tokens' cosine with only this group in INT8
    reason: str


@dataclass(frozen=True)
class Int8Report:
    """What `panda calibrate` recorded in `vision_int8` (calibration/calibrate.py writes it)."""

    file: str  # the TensorRT (Q/DQ) form
    cpu_file: str  # the ONNX Runtime form
    calibration: str  # the calibration tensors
    method: str
    samples: int
    target_cosine: float
    tensorrt: FormScore  # on the calibration videos
    cpu: FormScore
    heldout_videos: int
    heldout: tuple[FormScore, FormScore] | None  # (TensorRT form, CPU form) on held-out videos
    groups: dict[str, GroupReport]
    float_groups: list[str]
    quantized_nodes: int
    quantizable_nodes: int

    @classmethod
    def from_dict(cls, entry: dict[str, Any], bundle: str | Path) -> Int8Report:
        """The report of a `vision_int8` section; a field missing is a BundleError naming it."""
        root = Path(bundle)
        data = {VISION_INT8: entry}

        def value(key: str) -> Any:
            return manifest_value(data, f"{VISION_INT8}.{key}", root)

        def score(key: str) -> FormScore:
            return FormScore(float(value(f"{key}.cosine_mean")), float(value(f"{key}.cosine_min")))

        heldout = entry.get("heldout")
        groups = {
            name: GroupReport(
                name,
                int(value(f"groups.{name}.nodes")),
                str(value(f"groups.{name}.precision")),
                float(value(f"groups.{name}.alone_cosine_mean")),
                str(value(f"groups.{name}.reason")),
            )
            for name in value("groups")
        }
        return cls(
            file=str(value("file")),
            cpu_file=str(value("cpu_file")),
            calibration=str(value("calibration")),
            method=str(value("method")),
            samples=int(value("samples")),
            target_cosine=float(value("target_cosine")),
            tensorrt=FormScore(float(value("cosine_mean")), float(value("cosine_min"))),
            cpu=FormScore(float(value("cpu_cosine_mean")), float(value("cpu_cosine_min"))),
            heldout_videos=len(heldout["videos"]) if heldout else 0,
            heldout=(score("heldout.tensorrt"), score("heldout.cpu")) if heldout else None,
            groups=groups,
            float_groups=list(value("float_groups")),
            quantized_nodes=int(value("quantized_nodes")),
            quantizable_nodes=int(value("quantizable_nodes")),
        )


@dataclass(frozen=True)
class Gguf:
    """One GGUF decoder (`llm.gguf.<type>`); `fields` is its entry as written."""

    type: str
    file: str
    tensor_count: int | None
    tensor_types: dict[str, int]  # ggml type -> how many tensors
    fields: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        return dict(self.fields)


@dataclass(frozen=True)
class Engine:
    """One TensorRT engine record (`engines.<file>`, written by trt.record.engine_record)."""

    file: str
    precision: str
    tensorrt: str
    gpu: dict[str, Any]
    profile: str | None
    inputs: dict[str, Any]
    outputs: dict[str, Any]
    source_file: str | None  # the graph it was built from
    device_memory_bytes: int | None  # what the built engine said it needs while running
    fields: dict[str, Any]

    @property
    def gpu_name(self) -> str | None:
        return self.gpu.get("name")

    def to_dict(self) -> dict[str, Any]:
        return dict(self.fields)


@dataclass(frozen=True)
class Manifest:
    """`manifest.json`, parsed and checked once: what every reader asks of a bundle, by method.

    Every file name a method returns has passed `checked_path` (inside the bundle, listed in `files`);
    a missing or malformed field is a BundleError that names it and says to export again. The JSON
    stays as written (`to_dict`), so FORMAT_VERSION 1 bundles open unchanged.
    """

    root: Path
    files: dict[str, FileRecord]
    source: Source | None
    model: ModelConfig | None
    graphs: dict[str, Graph]
    ggufs: dict[str, Gguf]
    engines: dict[str, Engine]
    prompt: str | None
    tokenizer: str | None
    tools: dict[str, str]
    data: dict[str, Any] = field(repr=False)
    verified: dict[str, str] = field(default_factory=dict)  # name -> 'hashed' / 'unchanged' (load)

    @classmethod
    def load(cls, bundle: str | Path, verify: bool = True) -> Manifest:
        """Read and check `bundle/manifest.json`; with `verify`, every listed file's size and hash too."""
        data = load_manifest(bundle, verify=False)
        manifest = cls.from_dict(data, bundle)
        if verify:
            return replace(manifest, verified=verify_files(bundle, data))
        return manifest

    @classmethod
    def from_dict(cls, data: dict[str, Any], bundle: str | Path) -> Manifest:
        """The manifest `data` of `bundle` (as `load_manifest` or an export returned it), checked."""
        root = Path(bundle)
        files = _section(data, "files", root) or {}
        checked = {**data, "files": files}
        records = {name: _record(root, checked, name, record, "files") for name, record in files.items()}
        return cls(
            root=root,
            files=records,
            source=_source(root, data),
            model=_model(root, data),
            graphs={k: _graph(root, checked, k) for k in (VISION, VISION_FP16, VISION_INT8) if data.get(k)},
            ggufs=_ggufs(root, checked),
            engines=_engines(root, checked),
            prompt=_name(root, checked, data.get("prompt"), "'prompt'", optional=True),
            tokenizer=_name(root, checked, data.get("tokenizer"), "'tokenizer'", optional=True),
            tools=dict(_section(data, "tools", root) or {}),
            data=data,
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.data)

    # --- files ---

    def path(self, name: str) -> Path:
        """A listed file of the bundle (names from this manifest are checked when it is parsed)."""
        return checked_path(self.root, self.data, name, "file")

    def sha256(self, name: str) -> str:
        if name not in self.files:
            raise BundleError(f"{self.root}: the manifest's 'files' does not list {name}; export again")
        return self.files[name].sha256

    def tokenizer_path(self) -> Path:
        return checked_path(self.root, self.data, self.tokenizer or TOKENIZER_FILE, "'tokenizer'")

    def prompt_path(self) -> Path | None:
        return None if self.prompt is None else self.path(self.prompt)

    # --- the model ---

    @property
    def config(self) -> ModelConfig:
        """The model configuration the bundle was exported with (`model`)."""
        if self.model is None:
            raise BundleError(
                f"{self.root}: the manifest has no 'model' (the model configuration); export again"
            )
        return self.model

    # --- the decoder ---

    def gguf(self, gguf_type: str | None = None) -> Gguf:
        """The GGUF of `gguf_type`, or the preferred one the bundle holds (backends.GGUF_PREFERENCE)."""
        if not self.ggufs:
            raise BundleError(
                f"{self.root}: no GGUF decoder; run panda export --target gguf --out {self.root}"
            )
        if gguf_type is None:
            return self.ggufs[next(t for t in (*GGUF_PREFERENCE, *self.ggufs) if t in self.ggufs)]
        if gguf_type not in self.ggufs:
            raise BundleError(
                f"{self.root}: no {gguf_type} GGUF (it holds {', '.join(sorted(self.ggufs))}); "
                f"run panda export --target gguf --gguf-type {gguf_type} --out {self.root}"
            )
        return self.ggufs[gguf_type]

    def gguf_path(self, gguf_type: str | None = None) -> Path:
        return self.path(self.gguf(gguf_type).file)

    # --- vision ---

    @property
    def vision(self) -> Graph:
        """The fp32 graph (`vision`), which every other graph and engine is made from."""
        return self.graph(VISION)

    def has_graph(self, section: str) -> bool:
        return section in self.graphs

    def graph(self, section: str) -> Graph:
        if section not in self.graphs:
            if section == VISION_INT8:
                raise BundleError(
                    f"{self.root}: no INT8 vision graph; run panda calibrate --bundle {self.root}"
                )
            raise BundleError(
                f"{self.root}: no '{section}' graph; run panda export --target onnx --out {self.root}"
            )
        return self.graphs[section]

    def vision_graph(self, backend: str, precision: str) -> Path:
        """The ONNX graph `backend` runs at `precision`: the fp32 graph, or for int8 the ONNX Runtime
        (U8S8) form; for trt the graph its engine of that precision is built from, as the bundle's
        TensorRT target says (stab.fp16.onnx for fp16 on 10 and 11, the Q/DQ form for int8): it sizes
        and names the run, the engine itself is chosen from `engines`."""
        check_precision(backend, precision)
        if backend == TRT and self.profile is not None:
            section = trt_target(self.profile).graphs[precision]  # stab.fp16.onnx for 10 and 11
            if self.has_graph(section):
                return self.path(self.graph(section).file)
        if precision != INT8:
            return self.path(self.vision.file)
        int8 = self.graph(VISION_INT8)
        return self.path(int8.file if backend == TRT or int8.cpu_file is None else int8.cpu_file)

    def int8_report(self) -> Int8Report:
        """What the calibration recorded with the INT8 graphs."""
        return Int8Report.from_dict(self.graph(VISION_INT8).fields, self.root)

    def graph_io(self, section: str) -> tuple[dict[str, Any], dict[str, Any]]:
        """A graph's inputs and outputs: its own, else the fp32 graph's (every graph takes and gives
        what it does: float32 frames -> tokens)."""
        graph, vision = self.graph(section), self.vision
        inputs, outputs = graph.inputs or vision.inputs, graph.outputs or vision.outputs
        if inputs is None or outputs is None:
            raise BundleError(f"{self.root}: the manifest has no '{VISION}.outputs'; export again")
        return inputs, outputs

    def io_shapes(self, section: str = VISION) -> tuple[list[int], list[int]]:
        """The shapes of a graph's frames input and visual-tokens output."""
        inputs, outputs = self.graph_shapes(section)
        try:
            return inputs[FRAMES], outputs[VISUAL_TOKENS]
        except KeyError:
            raise BundleError(
                f"{self.root}: the manifest's '{section}' has no {FRAMES} or {VISUAL_TOKENS}; export again"
            ) from None

    def graph_shapes(self, section: str = VISION) -> tuple[dict[str, list[int]], dict[str, list[int]]]:
        """name -> shape of a graph's inputs, and of its outputs."""
        inputs, outputs = self.graph_io(section)
        try:
            shapes_in = {n: list(s["shape"]) for n, s in inputs.items()}
            return shapes_in, {n: list(s["shape"]) for n, s in outputs.items()}
        except (KeyError, TypeError, AttributeError):
            raise BundleError(
                f"{self.root}: the manifest's '{section}' inputs or outputs lack a shape; export again"
            ) from None

    @property
    def token_width(self) -> int:
        """The width of the vision graph's visual tokens (the LLM's hidden size when parts fit)."""
        shape = manifest_value(self.data, f"{VISION}.outputs.{VISUAL_TOKENS}.shape", self.root)
        return int(shape[-1])

    @property
    def profile(self) -> str | None:
        """The TensorRT profile the graphs were exported for (`vision.profile`)."""
        return self.vision.profile

    def engines_of(self, precision: str) -> list[Engine]:
        return [e for e in self.engines.values() if e.precision == precision]

    def engine_for(self, record: dict[str, Any]) -> Engine:
        """The engine a record (trt.record.engine_record) written into this manifest describes."""
        return self.engines[record["file"]]

    # --- writing ---

    def extended(
        self, updates: dict[str, Any], new_files: Iterable[str]
    ) -> tuple[dict[str, Any], list[str], dict[str, dict[str, Any]]]:
        """What `extend_manifest` writes with `updates` (sections by name) and `new_files`."""
        return extended(self.root, self.data, updates, new_files)

    def extend(self, updates: dict[str, Any], new_files: Iterable[str]) -> Manifest:
        """This manifest with `updates` and `new_files`, written (`extend_manifest`) and parsed again."""
        return Manifest.from_dict(extend_manifest(self.root, self.data, updates, new_files), self.root)

    def with_engine(self, record: dict[str, Any]) -> Manifest:
        """This manifest with the engine `record` (trt.record.engine_record) added, written."""
        engines = {**{n: e.to_dict() for n, e in self.engines.items()}, record["file"]: record}
        return self.extend({ENGINES: dict(sorted(engines.items()))}, [record["file"]])

    def kept_for_vision_export(self) -> tuple[dict[str, Any], list[str]]:
        """What an ONNX export keeps of this bundle: its GGUF decoders (`llm`), and their files."""
        kept = {"llm": self.data["llm"]} if "llm" in self.data else {}
        return kept, [g.file for g in self.ggufs.values() if (self.root / g.file).is_file()]

    def with_gguf(
        self, entry: dict[str, Any], source: Source, model: ModelConfig, written: Iterable[str]
    ) -> tuple[dict[str, Any], list[str]]:
        """The fields and files of this manifest with the GGUF `entry` added (`source` and `model` when
        it has none yet): what `StagedFiles.commit` writes. `written`: the files besides the GGUF that
        this export stages (written now, or already there)."""
        data = {k: v for k, v in self.data.items() if k not in ("format_version", "files")}
        if self.source is None:
            data |= {"source": source.to_dict(), "model": model.to_dict()}
        data.setdefault("prompt", PROMPT_FILE)
        data.setdefault("tokenizer", TOKENIZER_FILE)
        ggufs = {**{t: g.to_dict() for t, g in self.ggufs.items()}, entry["type"]: entry}
        data["llm"] = {**(data.get("llm") or {}), "gguf": ggufs, "config": dict(vars(model.llm))}
        written = {*written, entry["file"]}
        names = {n for n in self.files if (self.root / n).is_file()}
        names |= {TOKENIZER_FILE, PROMPT_FILE} | {g["file"] for g in ggufs.values()}
        return data, sorted(n for n in names if n in written or (self.root / n).is_file())

    @classmethod
    def empty(cls, bundle: str | Path) -> Manifest:
        """A bundle with no manifest yet, for an export's first part."""
        return cls.from_dict({"files": {}}, bundle)


def _section(data: Any, key: str, root: Path) -> dict[str, Any] | None:
    value = data.get(key)
    if value is not None and not isinstance(value, dict):
        raise BundleError(f"{root}: the manifest's '{key}' is not a section; export again")
    return value


def _name(root: Path, data: dict[str, Any], name: Any, where: str, optional: bool = False) -> str | None:
    """A file name the manifest holds, through `checked_path` (None when optional and absent)."""
    if name is None and optional:
        return None
    checked_path(root, data, name, where)
    return name


def _record(root: Path, data: dict[str, Any], name: str, record: Any, where: str) -> FileRecord:
    checked_path(root, data, name, f"'{where}'")
    if not isinstance(record, dict) or not isinstance(record.get("size"), int):
        raise BundleError(f"{root}: the manifest's record of {name} is not a size and hash; export again")
    return FileRecord(str(record.get("sha256")), record["size"])


def _source(root: Path, data: dict[str, Any]) -> Source | None:
    source = _section(data, "source", root)
    if source is None:
        return None
    weights = source.get("weights")
    if weights is not None and not isinstance(weights, dict):
        raise BundleError(f"{root}: the manifest's 'source.weights' is not a section; export again")
    records = None
    if weights is not None:
        records = {}
        for name, record in weights.items():
            if not isinstance(record, dict):
                raise BundleError(
                    f"{root}: the manifest's record of source weight {name} is malformed; export again"
                )
            records[name] = FileRecord(str(record.get("sha256")), record.get("size"))
    return Source(source.get("checkpoint"), records)


def _model(root: Path, data: dict[str, Any]) -> ModelConfig | None:
    """`model` as a ModelConfig: every field of its vision and llm parts present, none unknown."""
    model = _section(data, "model", root)
    if model is None:
        return None
    parts = {}
    for key, kind in (("vision", VisionConfig), ("llm", LlmConfig)):
        values = manifest_value(data, f"model.{key}", root)
        for name in kind.__dataclass_fields__:
            manifest_value(data, f"model.{key}.{name}", root)
        try:
            parts[key] = kind(**values)
        except TypeError as exc:  # a field it does not know, or not a mapping
            raise BundleError(
                f"{root}: the manifest's 'model.{key}' does not fit ({exc}); export again"
            ) from None
    rest = {k: v for k, v in model.items() if k not in parts}
    try:
        return ModelConfig(**parts, **rest)
    except TypeError as exc:
        raise BundleError(f"{root}: the manifest's 'model' does not fit ({exc}); export again") from None


def _graph(root: Path, data: dict[str, Any], section: str) -> Graph:
    entry = _section(data, section, root) or {}
    # every name is checked before a missing one is reported: a name outside the bundle is the finding
    cpu_file = _name(root, data, entry.get("cpu_file"), f"'{section}.cpu_file'", optional=True)
    file = _name(root, data, manifest_value(data, f"{section}.file", root), f"'{section}.file'")
    profile = entry.get("profile", (data.get(VISION) or {}).get("profile"))
    return Graph(
        section=section,
        file=str(file),
        profile=None if profile is None else str(profile),
        inputs=entry.get("inputs"),
        outputs=entry.get("outputs"),
        cpu_file=cpu_file,
        tensorrt=entry.get("tensorrt"),
        opset=entry.get("opset"),
        fields=entry,
    )


def _ggufs(root: Path, data: dict[str, Any]) -> dict[str, Gguf]:
    llm = _section(data, "llm", root) or {}
    ggufs = llm.get("gguf") or {}
    if not isinstance(ggufs, dict):
        raise BundleError(f"{root}: the manifest's 'llm.gguf' is not a section; export again")
    out = {}
    for gguf_type, entry in ggufs.items():
        if not isinstance(entry, dict):
            raise BundleError(f"{root}: the manifest's 'llm.gguf.{gguf_type}' is not a section; export again")
        file = _name(
            root,
            data,
            manifest_value(data, f"llm.gguf.{gguf_type}.file", root),
            f"'llm.gguf.{gguf_type}.file'",
        )
        types = entry.get("tensor_types") or {}
        out[gguf_type] = Gguf(gguf_type, str(file), entry.get("tensor_count"), dict(types), entry)
    return out


def _engines(root: Path, data: dict[str, Any]) -> dict[str, Engine]:
    out = {}
    for key, entry in (_section(data, ENGINES, root) or {}).items():
        if not isinstance(entry, dict):
            raise BundleError(
                f"{root}: the manifest's '{ENGINES}.{key}' is not an engine record; export again"
            )
        file = _name(root, data, entry.get("file"), f"'{ENGINES}.{key}.file'")
        source = entry.get("source") or {}
        out[key] = Engine(
            file=str(file),
            precision=str(entry.get("precision")),
            tensorrt=str(entry.get("tensorrt")),
            gpu=dict(entry.get("gpu") or {}),
            profile=entry.get("profile"),
            inputs=dict(entry.get("inputs") or {}),
            outputs=dict(entry.get("outputs") or {}),
            source_file=source.get("file") if isinstance(source, dict) else None,
            device_memory_bytes=entry.get("device_memory_bytes"),
            fields=entry,
        )
    return out
