"""The KV cache's occupant: which video's prefix it holds, and which conversation's turns follow it.

Like a llama.cpp server slot (its tokens, its position, save/restore to a named file) behind a small
public API: chat, serve and a live window enter a video, claim the cache for a conversation, release
it, and save the prefix for later runs; nothing else touches the decoder's positions. A prefix is
known by a key (a video's sha256, a live window's id): the same key in the cache is reused from
memory, else it comes from the disk cache (checked against its digest) or is computed.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from panda_edge.errors import PandaError
from panda_edge.prompt import IMAGE_TOKEN_INDEX
from panda_edge.runtime.llm.decoder import LlamaDecoder
from panda_edge.runtime.prefix_cache import DamagedPrefix, PrefixCache

log = logging.getLogger(__name__)

# What a computed prefix needs: one (tokens, hidden) float32 array per frame, and the seconds its
# steps took (decode_video, vision).
VisualTokens = Callable[[], tuple[list[np.ndarray], dict[str, float]]]


class PrefixState:
    """The decoder's one sequence: a video prefix, then the turns of the conversation that owns it."""

    def __init__(
        self,
        decoder: LlamaDecoder,
        prefix_ids: list[int],
        disk_cache: PrefixCache | None,
        warn: Callable[[str], None],
    ) -> None:
        """`prefix_ids`: the prompt up to the question, `<image>` places included; `warn`: where what
        went wrong without failing an answer goes (a damaged or unwritable cache)."""
        self.decoder = decoder
        self.prefix_ids = prefix_ids
        self.disk_cache = disk_cache
        self._warn = warn
        self._resident: tuple[str, int] | None = None  # (key, prefix length) in the KV cache
        self._unsaved: tuple[str, str, int] | None = None  # (disk key, label, length) not yet on disk
        # The conversation whose turns follow the prefix: positions alone cannot tell two
        # conversations apart when both reach the same length.
        self._owner: object | None = None

    @property
    def n_ctx(self) -> int:
        """Positions the KV cache holds: prefix, turns and answer together."""
        return self.decoder.n_ctx

    @property
    def n_past(self) -> int:
        """Positions filled now."""
        return self.decoder.n_past

    @property
    def resident(self) -> str | None:
        """The key of the prefix in the KV cache now, if any."""
        return None if self._resident is None else self._resident[0]

    def enter(
        self, key: str, visual: VisualTokens, label: str | Path, disk: bool = True
    ) -> tuple[str, dict[str, float]]:
        """Make the KV cache hold exactly `key`'s prefix, with no owner; says how it was had (memory,
        disk, computed: `visual()` then prefill) and the seconds each step took. `label` names it in
        the log and the disk cache's record (the video's path). `disk` False keeps the disk cache out of
        it, for a prefix no later run will ask for again (a live window)."""
        self._owner = None
        if self._resident is not None and self._resident[0] == key:
            self.decoder.truncate(self._resident[1])
            log.debug("%s: prefix already in the KV cache", label)
            return "memory", {}
        self._resident = None
        self._unsaved = None
        self.decoder.truncate(0)
        disk_key = self.disk_cache.key(key) if disk and self.disk_cache is not None else None
        if disk_key is not None and (loaded := self._load(disk_key, label)) is not None:
            self._resident = (key, self.decoder.n_past)
            return "disk", {"load_prefix": loaded}
        tokens, timings = visual()
        start = time.perf_counter()
        self._feed(tokens)
        timings["prefill"] = time.perf_counter() - start
        self._resident = (key, self.decoder.n_past)
        if disk_key is not None:  # saved after the first answer: the first token does not wait for it
            self._unsaved = (disk_key, str(label), self.decoder.n_past)
        log.debug("%s: prefix computed (%d positions)", label, self.decoder.n_past)
        return "computed", timings

    def claim(self, owner: object) -> None:
        """`owner`'s turns follow the prefix now: it may go on from the KV cache."""
        if self._resident is None:
            raise PandaError("no video prefix is in the KV cache to claim")
        self._owner = owner

    def release(self) -> None:
        """No conversation may go on from the KV cache (a turn under way, or one that failed)."""
        self._owner = None

    def owned_by(self, owner: object) -> bool:
        """Whether `owner` claimed the KV cache and nobody entered a prefix since."""
        return self._resident is not None and self._owner is owner

    def save(self) -> float:
        """Put a computed prefix into the disk cache (seconds it took; 0 when there is nothing to
        save). Called after the first answer about the video, so the state holds that turn too; a
        load cuts it back to the prefix."""
        if self._unsaved is None or self.disk_cache is None:
            return 0.0
        disk_key, label, n_prefix = self._unsaved
        self._unsaved = None
        start = time.perf_counter()
        warning = self.disk_cache.save(disk_key, self.decoder.save_state_file, n_prefix, label)
        if warning is not None:
            self._warn(warning)
        return time.perf_counter() - start

    def forget(self) -> None:
        """An empty KV cache: the next `enter` computes or loads its prefix (benchmarks)."""
        self._resident = None
        self._unsaved = None
        self._owner = None
        self.decoder.truncate(0)

    def _load(self, disk_key: str, label: str | Path) -> float | None:
        """The prefix from the disk cache into the KV cache (seconds it took, digest check included),
        or None: not there, damaged (a warning) or refused by llama.cpp."""
        assert self.disk_cache is not None
        start = time.perf_counter()
        try:
            cached = self.disk_cache.load(disk_key)
        except DamagedPrefix as exc:
            self._warn(str(exc))
            return None
        if cached is None or not self.decoder.load_state_file(cached.state_file, cached.n_past):
            return None
        self.decoder.truncate(cached.n_past)  # the state was saved with its first answer
        log.debug("%s: prefix loaded from the disk cache", label)
        return time.perf_counter() - start

    def _feed(self, visual: list[np.ndarray]) -> None:
        """Text runs as tokens, consecutive `<image>` places as one block of embedding rows."""
        places = sum(1 for i in self.prefix_ids if i == IMAGE_TOKEN_INDEX)
        if places != len(visual):
            raise PandaError(f"the prompt has {places} <image> places for {len(visual)} frames")
        frames = iter(visual)
        run: list[int] = []
        rows: list[np.ndarray] = []
        for i in [*self.prefix_ids, None]:
            if i is not None and i != IMAGE_TOKEN_INDEX:
                if rows:
                    self.decoder.feed_embeddings(np.concatenate(rows))
                    rows = []
                run.append(i)
            elif i == IMAGE_TOKEN_INDEX:
                if run:
                    self.decoder.feed_tokens(run)
                    run = []
                rows.append(next(frames))
        if rows:
            self.decoder.feed_embeddings(np.concatenate(rows))
        if run:
            self.decoder.feed_tokens(run)
