"""The device runtime: video -> pre-processing -> vision backend -> llama.cpp -> streamed answer.

No torch unless the `torch` vision backend is asked for. Text goes into llama.cpp as token ids
(tokenized chunk by chunk as the official code does, by the bundle's `tokenizer.model`), each
frame's visual tokens as embeddings at its `<image>` place. A video's prefix (system prompt, "USER:",
visual tokens) is computed once: later questions about the same video (a new conversation, or a
follow-up turn) start from it in the KV cache, and `prefix_cache` keeps it on disk between runs.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from panda_edge.backends import VISION_BACKENDS, default_precision
from panda_edge.bundle import Engine, sha256_file
from panda_edge.errors import PandaError, VideoError
from panda_edge.host import available_cores
from panda_edge.prompt import IMAGE_TOKEN_INDEX, PromptTokenizer, TextStream
from panda_edge.runtime.bundle_parts import BundleParts, check_fit, open_bundle
from panda_edge.runtime.llm.decoder import LlamaDecoder
from panda_edge.runtime.prefix_cache import PrefixCache
from panda_edge.runtime.vision.base import VisionBackend
from panda_edge.sampling import GREEDY, Sampling, pick_token
from panda_edge.timing import rate

log = logging.getLogger(__name__)

DEFAULT_N_CTX = 4096


@dataclass
class Answer:
    """One answer and where its time went (seconds)."""

    text: str
    tokens: list[int]
    ttft_s: float  # from the question to the first token
    decode_s: float  # from the first token to the last
    prefix: str  # how the video prefix was had: computed, memory (resident), disk (--cache)
    timings_s: dict[str, float] = field(default_factory=dict)  # decode_video, vision, prefill, question
    prompt_tokens: int = 0  # positions before the first generated token, visual tokens included
    cached_tokens: int = 0  # of those, how many were already in the KV cache (memory or disk)
    finish_reason: str = "stop"  # stop: `</s>` or the caller's `should_stop`; length: max_new_tokens

    @property
    def decode_tok_s(self) -> float | None:
        """None when there is no decode rate: one token, or a decode too short for the timer."""
        return rate(len(self.tokens) - 1, self.decode_s) if len(self.tokens) > 1 else None

    def to_dict(self) -> dict[str, Any]:
        return {
            "answer": self.text,
            "tokens": len(self.tokens),
            "ttft_ms": round(self.ttft_s * 1e3, 2),
            "decode_tok_s": None if self.decode_tok_s is None else round(self.decode_tok_s, 2),
            "prefix": self.prefix,
            "prompt_tokens": self.prompt_tokens,
            "cached_tokens": self.cached_tokens,
            "finish_reason": self.finish_reason,
            "timings_ms": {k: round(v * 1e3, 2) for k, v in self.timings_s.items()},
        }


def open_vision(parts: BundleParts, backend: str, checkpoint: str | None = None) -> VisionBackend:
    """The vision backend for the bundle: ort (its ONNX, fp32 or int8), trt (its engine) or torch."""
    if backend == "ort":
        from panda_edge.runtime.vision.ort import OrtVisionEngine

        return OrtVisionEngine(parts.vision_onnx)
    if backend == "trt":
        from panda_edge.runtime.vision.trt import TrtVisionEngine

        return TrtVisionEngine(parts.root, precision=parts.vision_precision)
    if backend == "torch":
        if checkpoint is None:
            raise PandaError("--vision torch runs the PyTorch reference: give --checkpoint (or 'tiny')")
        from panda_edge.model.vision import VisionTower
        from panda_edge.runtime.vision.torch_ref import TorchVisionReference

        return TorchVisionReference(VisionTower.from_checkpoint(checkpoint))
    raise PandaError(f"unknown vision backend '{backend}'; choose one of: {', '.join(VISION_BACKENDS)}")


def vision_file(parts: BundleParts, backend: str, engine_record: Engine | None = None) -> str:
    """The bundle file the vision backend runs, whose hash keys the prefix cache: the engine chosen
    for trt (a rebuilt engine must not reuse a prefix computed by the old one), the graph of the asked
    precision for ort (the INT8 CPU graph, or stab.onnx). torch runs the checkpoint: stab.onnx stands
    in, as the bundle's export of it."""
    if backend == "trt":
        if engine_record is None:
            raise PandaError("the trt backend has not chosen its engine yet")
        return engine_record.file
    return parts.vision_onnx.relative_to(parts.root).as_posix()


def check_runtime_memory(parts: BundleParts, n_ctx: int, kv_cache: str) -> None:
    """Exit-2 error before loading when the GGUF, its KV cache for `n_ctx` and the vision graph do not
    fit in the memory available (CPU: llama.cpp maps the GGUF and allocates the whole KV cache)."""
    from panda_edge.memory import check_memory
    from panda_edge.plan.ggml import kv_cache_bytes
    from panda_edge.plan.memory import HOST_PROCESS_BYTES, compute_buffer_bytes

    llm = asdict(parts.manifest.config.llm)
    need = (
        parts.gguf.stat().st_size
        + kv_cache_bytes(llm, n_ctx, kv_cache)
        + compute_buffer_bytes(llm, n_ctx)
        + 2 * parts.vision_onnx.stat().st_size  # weights + activations, roughly
        + HOST_PROCESS_BYTES
    )
    check_memory(
        need,
        f"the runtime ({parts.gguf.name}, a {n_ctx}-position {kv_cache} KV cache)",
        "a smaller GGUF (--gguf-type q4_k_m), a shorter --n-ctx, --kv-cache q8_0, or --n-gpu-layers on a GPU",
    )


class VideoRuntime:
    """A bundle loaded for answering: vision backend + llama.cpp decoder + tokenizer."""

    def __init__(
        self,
        bundle: str | Path,
        vision: str = "ort",
        precision: str | None = None,
        gguf_type: str | None = None,
        threads: int | None = None,
        n_gpu_layers: int = 0,
        n_ctx: int | None = None,
        n_batch: int = 512,
        kv_cache: str = "f16",
        prefix_cache: str | Path | None = None,
        checkpoint: str | None = None,
        cache_max_bytes: int | None = None,
    ) -> None:
        precision = precision or default_precision(vision)
        self.parts = open_bundle(bundle, gguf_type, precision, vision)
        self.vision_name = vision
        manifest, root = self.parts.manifest, self.parts.root
        self.vision_config = manifest.config.vision
        self.tokenizer = PromptTokenizer(self.parts.tokenizer)
        threads = threads or available_cores()
        n_ctx = n_ctx or min(DEFAULT_N_CTX, manifest.config.llm.max_position_embeddings)
        if n_gpu_layers == 0:
            check_runtime_memory(self.parts, n_ctx, kv_cache)
        self.engine = open_vision(self.parts, vision, checkpoint)
        self.engine.__enter__()
        try:
            self.decoder = LlamaDecoder(self.parts.gguf, n_ctx, n_batch, threads, n_gpu_layers, kv_cache)
            check_fit(
                self.parts,
                self.decoder.n_embd,
                self.decoder.n_vocab,
                self.tokenizer.vocab_size,
                self.engine.layout.video_frames,
            )
        except BaseException:
            self.close()
            raise
        self.vision_file = vision_file(self.parts, vision, getattr(self.engine, "record", None))
        log.info(
            "vision backend %s (%s %s), %d threads, n_ctx %d",
            vision,
            self.vision_file,
            precision,
            threads,
            n_ctx,
        )
        self.identity = {
            "gguf": manifest.sha256(self.parts.gguf.relative_to(root).as_posix()),
            "vision": manifest.sha256(self.vision_file),
            "backend": f"{vision}-{precision}",
            "kv_cache": kv_cache,
        }
        self.disk_cache = (
            PrefixCache(prefix_cache, self.identity, cache_max_bytes) if prefix_cache is not None else None
        )
        self.warnings: list[str] = []  # what went wrong without failing an answer (a full cache disk)
        self._prefix_ids = self.tokenizer.video_prefix_ids(self.parts.frames)
        self._resident: tuple[Any, int] | None = None  # (video identity, prefix length) in the KV cache
        self._unsaved: tuple[str, Path, int] | None = None  # a computed prefix for the disk cache
        # The conversation whose turns follow the prefix in the KV cache: positions alone cannot tell
        # two conversations apart when both reach the same length.
        self._owner: VideoChat | None = None

    # --- lifetime --------------------------------------------------------------------------------

    def close(self) -> None:
        if getattr(self, "decoder", None) is not None:
            self.decoder.close()
            self.decoder = None
        self.engine.__exit__(None, None, None)

    def __enter__(self) -> VideoRuntime:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def describe(self) -> dict[str, Any]:
        """What this runtime runs, for a report: the bundle, the vision backend and file, the decoder,
        and which files were hashed at this start and which this machine had hashed before."""
        parts = self.parts
        return {
            "bundle": str(parts.root),
            "vision": f"{self.vision_name} {parts.vision_precision} ({self.vision_file})",
            "decoder": f"llama.cpp {parts.gguf.name}",
            "verified": {
                how: sorted(n for n, h in parts.verified.items() if h == how)
                for how in ("hashed", "unchanged")
            },
        }

    # --- answering -------------------------------------------------------------------------------

    def chat(self, video: str | Path, video_sha256: str | None = None) -> VideoChat:
        """A conversation about `video`; its first question computes (or reuses) the video prefix.

        A prefix is known by the video's content (`video_sha256`, hashed here when not given), so the
        same clip under another name, a server's temporary copy say, reuses it.
        """
        path = Path(video)
        if not path.is_file():
            raise VideoError(f"{path}: no such video file")
        return VideoChat(self, path, video_sha256 or sha256_file(path))

    def answer(
        self,
        video: str | Path,
        question: str,
        max_new_tokens: int = 64,
        sampling: Sampling = GREEDY,
        on_text: Callable[[str], None] | None = None,
    ) -> Answer:
        """One question about `video` in a fresh conversation."""
        return self.chat(video).ask(question, max_new_tokens, sampling, on_text)

    @property
    def resident_video(self) -> str | None:
        """The sha256 of the video whose prefix is in the KV cache now, if any."""
        return None if self._resident is None else self._resident[0]

    def forget_video(self) -> None:
        """Drop the resident video prefix, so the next question computes it again (benchmarks)."""
        self._resident = None
        self._unsaved = None
        self._owner = None
        self.decoder.truncate(0)

    def encode_video(self, video: Path) -> tuple[list[np.ndarray], dict[str, float]]:
        """Decode + pre-process + vision: one (tokens, hidden) float32 array per frame."""
        from panda_edge.video import load_video

        start = time.perf_counter()
        frames = load_video(video, self.vision_config)
        decoded = time.perf_counter()
        tokens = self.engine.encode(frames)
        return tokens, {"decode_video": decoded - start, "vision": time.perf_counter() - decoded}

    def _save_prefix(self) -> float:
        """Put a computed prefix into the disk cache (seconds it took). Called after the first answer
        about the video, so the state holds that turn too; a load cuts it back to the prefix."""
        if self._unsaved is None or self.disk_cache is None:
            return 0.0
        key, video, n_prefix = self._unsaved
        self._unsaved = None
        start = time.perf_counter()
        warning = self.disk_cache.save(key, self.decoder.save_state_file, n_prefix, video)
        if warning is not None:
            self.warnings.append(warning)
        return time.perf_counter() - start

    def _enter_video(self, video: Path, video_sha256: str) -> tuple[str, dict[str, float]]:
        """Make the KV cache hold exactly `video`'s prefix; says how (computed, memory, disk)."""
        if self._resident is not None and self._resident[0] == video_sha256:
            self.decoder.truncate(self._resident[1])
            log.debug("%s: prefix already in the KV cache", video)
            return "memory", {}
        self._resident = None
        self._unsaved = None
        self.decoder.truncate(0)
        disk_key = self.disk_cache.key(video_sha256) if self.disk_cache is not None else None
        if disk_key is not None and (cached := self.disk_cache.load(disk_key)) is not None:
            start = time.perf_counter()
            if self.decoder.load_state_file(cached.state_file, cached.n_past):
                self.decoder.truncate(cached.n_past)  # the state was saved with its first answer
                self._resident = (video_sha256, cached.n_past)
                log.debug("%s: prefix loaded from the disk cache", video)
                return "disk", {"load_prefix": time.perf_counter() - start}
        visual, timings = self.encode_video(video)
        start = time.perf_counter()
        self._feed_prefix(visual)
        timings["prefill"] = time.perf_counter() - start
        self._resident = (video_sha256, self.decoder.n_past)
        if disk_key is not None:  # saved after this first answer: the first token does not wait for it
            self._unsaved = (disk_key, video, self.decoder.n_past)
        log.debug("%s: prefix computed (%d positions)", video, self.decoder.n_past)
        return "computed", timings

    def _feed_prefix(self, visual: list[np.ndarray]) -> None:
        """Text runs as tokens, consecutive `<image>` places as one block of embedding rows."""
        if sum(1 for i in self._prefix_ids if i == IMAGE_TOKEN_INDEX) != len(visual):
            raise PandaError(f"the prompt has {self.parts.frames} <image> places for {len(visual)} frames")
        frames = iter(visual)
        run: list[int] = []
        rows: list[np.ndarray] = []
        for i in [*self._prefix_ids, None]:
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


class VideoChat:
    """Turns about one video in the Vicuna v1 format; each follow-up adds only its own text."""

    def __init__(self, runtime: VideoRuntime, video: Path, video_sha256: str) -> None:
        self.runtime = runtime
        self.video = video
        self.video_sha256 = video_sha256
        self.turns: list[tuple[str, str]] = []
        self._pending: list[int] = []  # tokens that close the last answer, fed with the next question

    def _continue(self) -> tuple[str, dict[str, float], int]:
        """Ready the KV cache for this conversation's next tokens: how the video prefix was had, its
        timings, and how many positions were already there."""
        runtime = self.runtime
        if not self.turns:
            how, timings = runtime._enter_video(self.video, self.video_sha256)
            return how, timings, 0 if how == "computed" else runtime.decoder.n_past
        if runtime._resident is None or runtime._owner is not self:
            raise PandaError(
                "another conversation used the runtime since this one's last turn (or that turn "
                "failed); start a new conversation"
            )
        return "memory", {}, runtime.decoder.n_past

    def replay(self, turns: Sequence[tuple[str, str]]) -> tuple[str, int]:
        """Earlier (question, answer) turns a client repeats, fed as text without generating them (as
        training encodes them), so the next `ask` continues that conversation. Returns how the video
        prefix was had and how many positions were already in the KV cache."""
        runtime = self.runtime
        how, _, cached = self._continue()
        runtime._owner = None
        tokenizer = runtime.tokenizer
        for question, answer in turns:
            first = not self.turns
            turn = tokenizer.turn_ids(question, first)
            runtime.decoder.feed_tokens(
                [*self._pending, *turn, *tokenizer.answer_ids(question, answer, first)]
            )
            self._pending = []
            self.turns.append((question, answer))
        runtime._owner = self
        return how, cached

    def ask(
        self,
        question: str,
        max_new_tokens: int = 64,
        sampling: Sampling = GREEDY,
        on_text: Callable[[str], None] | None = None,
        should_stop: Callable[[], bool] | None = None,
    ) -> Answer:
        """Stream the answer's text to `on_text` and return it with its timings. `should_stop`, asked
        after each token, ends the answer early (a stop string seen, a client gone)."""
        if not question.strip():
            raise PandaError("the question is empty")
        runtime, decoder, tokenizer = self.runtime, self.runtime.decoder, self.runtime.tokenizer
        start = time.perf_counter()
        how, timings, cached = self._continue()
        runtime._owner = None  # until this turn is complete: a failed turn leaves no owner
        step = time.perf_counter()
        decoder.feed_tokens([*self._pending, *tokenizer.turn_ids(question, first=not self.turns)])
        timings["question"] = time.perf_counter() - step
        prompt_tokens = decoder.n_past
        stream = TextStream(tokenizer, on_text)
        rng = None if sampling.greedy else sampling.generator()
        first_token_at = None
        finish = "stop"
        for token in self._generate(max_new_tokens, sampling, rng):
            if first_token_at is None:
                first_token_at = time.perf_counter()
            stream.push(token)
            if len(stream.tokens) == max_new_tokens:
                finish = "length"
            elif should_stop is not None and should_stop():
                break
        end = time.perf_counter()
        first_token_at = first_token_at or end
        if saved := runtime._save_prefix():
            timings["save_prefix"] = saved
        runtime._owner = self
        answer = stream.answer()
        self.turns.append((question, answer))
        return Answer(
            answer,
            stream.tokens,
            first_token_at - start,
            end - first_token_at,
            how,
            timings,
            prompt_tokens=prompt_tokens,
            cached_tokens=cached,
            finish_reason=finish,
        )

    def _generate(
        self, max_new_tokens: int, sampling: Sampling, rng: np.random.Generator | None
    ) -> Iterator[int]:
        """Generated ids; the last one yielded enters the KV cache with the next question, together
        with the `</s>` that closes the answer (also when the caller stops early)."""
        decoder, eos = self.runtime.decoder, self.runtime.tokenizer.eos_id
        self._pending = [eos]
        for n in range(max_new_tokens):
            token = pick_token(decoder.logits(), sampling, rng)
            if token == eos:
                self._pending = [eos]
                return
            self._pending = [token, eos]
            yield token
            if n + 1 == max_new_tokens:
                return
            decoder.feed_tokens([token])
            self._pending = [eos]
