"""`--cache DIR`: a video's prefix (system prompt + visual tokens) as llama.cpp KV state, on disk.

Asking about a video seen before then skips decoding, vision and prefill. The key is the video
file's sha256 and everything the state depends on (the GGUF's and vision graph's hashes, the vision
backend and precision, the KV cache type), so a changed bundle or file never reuses a stale state.
llama.cpp writes and reads the state file itself, tensor by tensor: at 7B a prefix is 0.5-1.2 GB,
and a copy of it in memory would show in the peak RSS. The directory is bounded (`max_bytes`): the
least recently used prefixes go first. A cache that cannot be written (a full disk) is a warning,
never a failed answer.

Each state file's sha256 is written beside it (hashed after llama.cpp has written the file) and checked
before llama.cpp reads it back: the size alone catches a truncated file, not flipped bytes, and a damaged
state loads without complaint and answers garbage (with `panda serve --ray` the directory is shared by
every replica). sha256 is the standard library's and uses SHA-NI where the CPU has it: 0.36 s for a
565 MB 7B prefix on the idle 2-core Xeon (benchmarks/results/prefix_checksum.json; XXH3 took 0.21 s
on the same machine under load, not worth a dependency), against 46 s to compute a 7B prefix again
and 0.65 s to load one (a warm cache's first token: about 2.5 s). Replicas that
save one video's prefix at once can leave one's state beside the other's record: a false alarm,
recomputed like a damaged file.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from panda_edge.bundle import sha256_file
from panda_edge.errors import PandaError
from panda_edge.fileio import atomic_path, write_json

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class CachedPrefix:
    state_file: Path
    n_past: int


class DamagedPrefix(PandaError):
    """A state file whose bytes are not the ones written: computed again, never loaded."""


class PrefixCache:
    def __init__(self, directory: str | Path, identity: dict[str, str], max_bytes: int | None = None) -> None:
        """`identity`: what besides the video decides the state (hashes, backend, KV type)."""
        self.directory = Path(directory)
        self.identity = identity
        self.max_bytes = max_bytes

    def key(self, video_sha256: str) -> str:
        data = json.dumps({"video": video_sha256, **self.identity}, sort_keys=True)
        return hashlib.sha256(data.encode()).hexdigest()[:32]

    def load(self, key: str) -> CachedPrefix | None:
        """The state stored under `key`, its bytes checked against the digest written with it; None
        when there is none or it is incomplete. Raises DamagedPrefix when the bytes differ (the caller
        warns, computes the prefix again and saves it over the damaged file)."""
        meta, state = self._paths(key)
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
            if state.stat().st_size != info.get("bytes") or not isinstance(info.get("sha256"), str):
                log.debug("prefix cache: %s is incomplete, computing the prefix again", state)
                return None
            n_past = int(info["n_past"])
            digest = sha256_file(state)
        except (OSError, ValueError, KeyError, TypeError):
            log.debug("prefix cache miss: %s", key)
            return None
        if digest != info["sha256"]:
            raise DamagedPrefix(
                f"the cached prefix {state} is damaged (its sha256 is not the one written with it); "
                "computing it again"
            )
        os.utime(state)  # recently used: evicted last
        log.debug("prefix cache hit: %s", state)
        return CachedPrefix(state, n_past)

    def save(self, key: str, write: Callable[[Path], int], n_past: int, video: Path) -> str | None:
        """Store a state `write(path)` puts into a file; returns a warning instead of raising when the
        directory cannot take it (full disk, no permission)."""
        meta, state = self._paths(key)
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
            with atomic_path(state) as tmp:
                write(tmp)
                digest = sha256_file(tmp)  # of the bytes llama.cpp wrote, before anyone can read them
            size = state.stat().st_size
            record = {"video": str(video), "n_past": n_past, "bytes": size, "sha256": digest}
            write_json(meta, {**record, **self.identity})
        except (OSError, PandaError) as exc:
            state.unlink(missing_ok=True)
            meta.unlink(missing_ok=True)
            return f"the prefix cache in {self.directory} could not keep this video's prefix ({exc})"
        self._evict(keep=key)
        return None

    def _evict(self, keep: str) -> None:
        """Least recently used prefixes out until the directory fits `max_bytes` (the newest stays)."""
        if self.max_bytes is None:
            return
        entries = []
        for state in self.directory.glob("*.kv"):
            try:
                stat = state.stat()
            except OSError:
                continue
            entries.append((stat.st_mtime_ns, stat.st_size, state))
        total = sum(size for _, size, _ in entries)
        for _, size, state in sorted(entries):
            if total <= self.max_bytes:
                break
            if state.stem == keep:
                continue
            state.unlink(missing_ok=True)
            state.with_suffix(".json").unlink(missing_ok=True)
            log.debug(
                "prefix cache: evicted %s (%.2f GB) to stay under %.2f GB",
                state,
                size / 1e9,
                self.max_bytes / 1e9,
            )
            total -= size

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.directory / f"{key}.json", self.directory / f"{key}.kv"
