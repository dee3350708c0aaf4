"""`--cache DIR`: a video's prefix (system prompt + visual tokens) as llama.cpp KV state, on disk.

Asking about a video seen before then skips decoding, vision and prefill. The key is the video
file's sha256 and everything the state depends on (the GGUF's and vision graph's hashes, the vision
backend and precision, the KV cache type), so a changed bundle or file never reuses a stale state.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from pathlib import Path

from panda_edge.bundle import sha256_file
from panda_edge.fileio import atomic_path, write_json


@dataclass(frozen=True)
class CachedPrefix:
    state: bytes
    n_past: int


class PrefixCache:
    def __init__(self, directory: str | Path, identity: dict[str, str]) -> None:
        """`identity`: what besides the video decides the state (hashes, backend, KV type)."""
        self.directory = Path(directory)
        self.identity = identity

    def key(self, video: Path) -> str:
        data = json.dumps({"video": sha256_file(video), **self.identity}, sort_keys=True)
        return hashlib.sha256(data.encode()).hexdigest()[:32]

    def load(self, key: str) -> CachedPrefix | None:
        meta, state = self._paths(key)
        if not (meta.is_file() and state.is_file()):
            return None
        try:
            info = json.loads(meta.read_text(encoding="utf-8"))
            data = state.read_bytes()
        except (OSError, ValueError):
            return None
        if len(data) != info.get("bytes"):
            return None
        return CachedPrefix(data, int(info["n_past"]))

    def save(self, key: str, prefix: CachedPrefix, video: Path) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        meta, state = self._paths(key)
        with atomic_path(state) as tmp:
            tmp.write_bytes(prefix.state)
        write_json(
            meta, {"video": str(video), "n_past": prefix.n_past, "bytes": len(prefix.state), **self.identity}
        )

    def _paths(self, key: str) -> tuple[Path, Path]:
        return self.directory / f"{key}.json", self.directory / f"{key}.kv"
