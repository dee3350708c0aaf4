"""The device runtime: video -> pre-processing -> vision backend -> llama.cpp -> streamed answer.

No torch unless the `torch` vision backend is asked for. Text goes into llama.cpp as token ids
(tokenized chunk by chunk as the official code does, by the bundle's `tokenizer.model`), each
frame's visual tokens as embeddings at its `<image>` place. A video's prefix (system prompt, "USER:",
visual tokens) is computed once: later questions about the same video (a new conversation, or a
follow-up turn) start from it in the KV cache (`prefix_state` owns what the cache holds), and
`prefix_cache` keeps it on disk between runs.

A `Slot` is one llama.cpp context with the prefix state that owns its KV cache; the runtime has one,
and `open_slot()` adds another on the same loaded weights (a live window's double buffer,
`runtime.live`).
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from panda_edge.backends import CPU, ORT, SMALLER_GGUF_TYPE, SMALLER_KV_CACHE, TORCH, TRT, default_n_ctx
from panda_edge.bundle import Engine, sha256_file
from panda_edge.errors import PandaError, VideoError
from panda_edge.host import default_threads
from panda_edge.prompt import PromptTokenizer, TextStream
from panda_edge.runtime.bundle_parts import BundleParts, check_fit
from panda_edge.runtime.llm.decoder import LlamaDecoder
from panda_edge.runtime.llm.llamacpp import gpu_offload
from panda_edge.runtime.lora_file import describe_lora
from panda_edge.runtime.options import RuntimeOptions
from panda_edge.runtime.prefix_cache import PrefixCache
from panda_edge.runtime.prefix_state import PrefixState, VisualTokens
from panda_edge.runtime.vision.base import VisionBackend
from panda_edge.sampling import GREEDY, Sampling, pick_token
from panda_edge.timing import rate

log = logging.getLogger(__name__)


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


def open_vision(parts: BundleParts, options: RuntimeOptions, threads: int) -> VisionBackend:
    """The vision backend the options ask for (checked when they were made), on `threads` CPU
    threads: ort (the bundle's ONNX, fp32 or int8), trt (its engine) or torch (the checkpoint's
    vision part, the PyTorch reference, at its dtype on its device)."""
    if options.vision == ORT:
        from panda_edge.runtime.vision.ort import OrtVisionEngine

        return OrtVisionEngine(parts.vision_onnx, threads=threads)
    if options.vision == TRT:
        from panda_edge.runtime.vision.trt import TrtVisionEngine

        return TrtVisionEngine(parts.root, precision=parts.vision_precision)
    from panda_edge.host import use_threads
    from panda_edge.model.vision import VisionTower
    from panda_edge.runtime.vision.torch_ref import TorchVisionReference

    use_threads(threads)
    return TorchVisionReference(VisionTower.from_checkpoint(options.checkpoint, options.torch_precision()))


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


def check_runtime_memory(parts: BundleParts, n_ctx: int, kv_type: str) -> None:
    """Exit-2 error before loading when the GGUF, its KV cache for `n_ctx` and the vision graph do not
    fit in the memory available (CPU: llama.cpp maps the GGUF and allocates the whole KV cache)."""
    from panda_edge.memory import check_memory
    from panda_edge.plan.footprint import HOST_PROCESS_BYTES, compute_buffer_bytes
    from panda_edge.plan.ggml import kv_cache_bytes

    llm = asdict(parts.manifest.config.llm)
    need = (
        parts.gguf.stat().st_size
        + kv_cache_bytes(llm, n_ctx, kv_type)
        + compute_buffer_bytes(llm, n_ctx)
        + 2 * parts.vision_onnx.stat().st_size  # weights + activations, roughly
        + HOST_PROCESS_BYTES
    )
    check_memory(
        need,
        f"the runtime ({parts.gguf.name}, a {n_ctx}-position {kv_type} KV cache)",
        f"a smaller GGUF (--gguf-type {SMALLER_GGUF_TYPE}), a shorter --n-ctx, --kv-type {SMALLER_KV_CACHE}, "
        "or --n-gpu-layers on a GPU",
    )


class VideoRuntime:
    """A bundle loaded for answering: vision backend + llama.cpp decoder + tokenizer."""

    def __init__(self, bundle: str | Path, options: RuntimeOptions | None = None) -> None:
        self.options = options = options or RuntimeOptions()
        vision, precision, kv_type = options.vision, options.vision_precision, options.kv_type
        self.parts = options.check(bundle)
        self.vision_name = vision
        manifest, root = self.parts.manifest, self.parts.root
        self.vision_config = manifest.config.vision
        self.tokenizer = PromptTokenizer(self.parts.tokenizer)
        threads = default_threads(options.threads)
        n_ctx = options.n_ctx or default_n_ctx(manifest.config.llm.max_position_embeddings)
        # the decoder's weights and KV cache are in this machine's memory unless llama.cpp offloads them
        self.decoder_on_cpu = options.n_gpu_layers == 0 or not gpu_offload()
        if self.decoder_on_cpu:
            check_runtime_memory(self.parts, n_ctx, kv_type)
        self.engine = open_vision(self.parts, options, threads)
        self.engine.__enter__()
        # one encode at a time: live windows' refresh threads and a server's decoder thread share the
        # engine (a TensorRT execution context and its buffers are not for concurrent use)
        self._vision_lock = threading.Lock()
        try:
            lora = None if options.lora is None else Path(options.lora)
            self.decoder = LlamaDecoder(
                self.parts.gguf, n_ctx, options.n_batch, threads, options.n_gpu_layers, kv_type, lora
            )
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
        self.lora_sha256 = None if options.lora is None else sha256_file(options.lora)
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
            # torch runs the checkpoint's weights, not the bundle's graph: their own hash
            "vision": self.engine.weights_sha256() if vision == TORCH else manifest.sha256(self.vision_file),
            # torch on a GPU computes other (close) tokens than on the CPU: its prefix is its own
            "backend": f"{vision}-{precision}" + ("" if options.device == CPU else f"-{options.device}"),
            "kv_cache": kv_type,
            # an adapter changes every layer's keys and values: a prefix cached without it is not this one's
            **({} if self.lora_sha256 is None else {"lora": self.lora_sha256}),
        }
        disk_cache = (
            PrefixCache(options.prefix_cache, self.identity, options.cache_max_bytes)
            if options.prefix_cache is not None
            else None
        )
        # what went wrong without failing an answer (a full cache disk); the latest, a server runs for days
        self.warnings: deque[str] = deque(maxlen=100)
        self._disk_cache = disk_cache
        self.prefix = PrefixState(
            self.decoder, self.tokenizer.video_prefix_ids(self.parts.frames), disk_cache, self.warn
        )
        self.slot = Slot(self.decoder, self.prefix)
        self._more_slots: list[Slot] = []

    def open_slot(self) -> Slot:
        """Another context on the loaded weights (one more KV cache of n_ctx positions, not another copy
        of the GGUF) with its own prefix state; closed with the runtime. Exit-2 error first when its
        KV cache and compute buffer do not fit in the memory available (CPU)."""
        if self.decoder_on_cpu:
            from panda_edge.memory import check_memory
            from panda_edge.plan.footprint import compute_buffer_bytes
            from panda_edge.plan.ggml import kv_cache_bytes

            llm = asdict(self.parts.manifest.config.llm)
            check_memory(
                kv_cache_bytes(llm, self.n_ctx, self.options.kv_type) + compute_buffer_bytes(llm, self.n_ctx),
                f"another llama.cpp context ({self.n_ctx} positions, {self.options.kv_type} KV cache)",
                f"a shorter --n-ctx or --kv-type {SMALLER_KV_CACHE}",
            )
        decoder = self.decoder.sibling()
        slot = Slot(decoder, PrefixState(decoder, self.prefix.prefix_ids, self._disk_cache, self.warn))
        self._more_slots.append(slot)
        return slot

    # --- lifetime --------------------------------------------------------------------------------

    def close(self) -> None:
        for slot in getattr(self, "_more_slots", ()):
            slot.decoder.close()
        self._more_slots = []
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
        parts, lora = self.parts, self.describe_lora()
        return {
            "bundle": str(parts.root),
            "vision": f"{self.options.vision_label} ({self.vision_file})",
            # serve's start line shows the decoder: an adapter changes every answer, so it is named there
            "decoder": f"llama.cpp {parts.gguf.name}" + ("" if lora is None else f" + LoRA {lora}"),
            **({} if lora is None else {"lora": lora}),
            "verified": {
                how: sorted(n for n, h in parts.verified.items() if h == how)
                for how in ("hashed", "unchanged")
            },
        }

    def describe_lora(self) -> str | None:
        """The `--lora` adapter applied to the decoder: its file name and sha256 (short); None: none."""
        if self.lora_sha256 is None:
            return None
        return describe_lora(self.options.lora, self.lora_sha256)

    def warn(self, message: str) -> None:
        """Something went wrong without failing an answer: logged now (stderr in the CLI, the server's
        log) and kept in `warnings` for a report."""
        log.warning("%s", message)
        self.warnings.append(message)

    @property
    def n_ctx(self) -> int:
        """The context size: positions for the video prefix, the turns and the answer together."""
        return self.prefix.n_ctx

    # --- answering -------------------------------------------------------------------------------

    @staticmethod
    def video_key(video: str | Path) -> str:
        """What a video's prefix is known by: its content's sha256, so the same clip under another
        name (a server's temporary copy) reuses it."""
        return sha256_file(video)

    def chat(self, video: str | Path, video_sha256: str | None = None) -> VideoChat:
        """A conversation about the video file `video`; its first question computes (or reuses) the
        video prefix.

        A prefix is known by the video's content (`video_sha256`, hashed here when not given), so the
        same clip under another name, a server's temporary copy say, reuses it.
        """
        path = Path(video)
        if not path.is_file():
            raise VideoError(f"{path}: no such video file")
        key = video_sha256 or self.video_key(path)
        return VideoChat(self, VideoInput(key, str(path), lambda: self.encode_video(path)))

    def frames_input(
        self,
        frames: Sequence[np.ndarray],
        fps: float = 1.0,
        label: str = "",
        max_frames: int | None = None,
    ) -> VideoInput:
        """A video given as RGB uint8 frames (a harness's images, a live window's frames), sampled to
        the model's frame count by the official rule (`video.frames`; frames without a rate are one
        per second) and known by the sampled frames' content. VideoError for no frames, more than
        `max_frames` (default `video.frames.MAX_FRAMES`; a live window's are bounded by its length),
        or frames of different sizes."""
        from panda_edge.video.frames import MAX_FRAMES, frames_key, sample_frames

        sampled = sample_frames(frames, self.vision_config.video_frames, fps, max_frames or MAX_FRAMES)
        label = label or f"{len(frames)} frames"
        return VideoInput(frames_key(sampled), label, lambda: self.encode_frames(sampled), len(sampled))

    def chat_frames(self, frames: Sequence[np.ndarray], fps: float = 1.0) -> VideoChat:
        """A conversation about a video given as frames (`frames_input`)."""
        return VideoChat(self, self.frames_input(frames, fps))

    def chat_input(self, video: VideoInput, slot: Slot | None = None) -> VideoChat:
        """A conversation about `video` in `slot` (default: the runtime's own)."""
        return VideoChat(self, video, slot)

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

    def encode_video(self, video: Path) -> tuple[list[np.ndarray], dict[str, float]]:
        """Decode + pre-process + vision: one (tokens, hidden) float32 array per frame."""
        from panda_edge.video import load_video

        start = time.perf_counter()
        frames = load_video(video, self.vision_config)
        decoded = time.perf_counter()
        with self._vision_lock:
            tokens = self.engine.encode(frames)
        return tokens, {"decode_video": decoded - start, "vision": time.perf_counter() - decoded}

    def encode_frames(self, frames: Sequence[np.ndarray]) -> tuple[list[np.ndarray], dict[str, float]]:
        """Pre-process + vision for frames already sampled (the same pre-processing as a decoded
        file's frames): one (tokens, hidden) float32 array per frame."""
        from panda_edge.video.preprocess import preprocess_frames

        start = time.perf_counter()
        pixels = preprocess_frames(frames, self.vision_config)
        ready = time.perf_counter()
        with self._vision_lock:
            tokens = self.engine.encode(pixels)
        return tokens, {"preprocess": ready - start, "vision": time.perf_counter() - ready}


@dataclass(frozen=True)
class Slot:
    """One llama.cpp context and the prefix state that owns its KV cache."""

    decoder: LlamaDecoder
    prefix: PrefixState


@dataclass(frozen=True)
class VideoInput:
    """What a conversation is about: the key its prefix is known by (a file's sha256, the frames'
    digest), a label for logs and the disk cache's record, how to compute its visual tokens, and how
    many real frames the model sees when that is known before decoding (frames given as frames)."""

    key: str
    label: str
    visual: VisualTokens
    frames: int | None = None


class VideoChat:
    """Turns about one video in the Vicuna v1 format; each follow-up adds only its own text."""

    def __init__(self, runtime: VideoRuntime, video: VideoInput, slot: Slot | None = None) -> None:
        self.runtime = runtime
        self.video = video
        self.slot = slot or runtime.slot
        self.turns: list[tuple[str, str]] = []
        self._pending: list[int] = []  # tokens that close the last answer, fed with the next question

    def _continue(self) -> tuple[str, dict[str, float], int]:
        """Ready the KV cache for this conversation's next tokens: how the video prefix was had, its
        timings, and how many positions were already there."""
        prefix = self.slot.prefix
        if not self.turns:
            how, timings = prefix.enter(self.video.key, self.video.visual, self.video.label)
            return how, timings, 0 if how == "computed" else prefix.n_past
        if not prefix.owned_by(self):
            raise PandaError(
                "another conversation used the runtime since this one's last turn (or that turn "
                "failed); start a new conversation"
            )
        return "memory", {}, prefix.n_past

    def replay(self, turns: Sequence[tuple[str, str]]) -> tuple[str, int]:
        """Earlier (question, answer) turns a client repeats, fed as text without generating them (as
        training encodes them), so the next `ask` continues that conversation. Returns how the video
        prefix was had and how many positions were already in the KV cache."""
        how, _, cached = self._continue()
        self.slot.prefix.release()
        tokenizer = self.runtime.tokenizer
        for question, answer in turns:
            first = not self.turns
            turn = tokenizer.turn_ids(question, first)
            self.slot.decoder.feed_tokens(
                [*self._pending, *turn, *tokenizer.answer_ids(question, answer, first)]
            )
            self._pending = []
            self.turns.append((question, answer))
        self.slot.prefix.claim(self)
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
        decoder, tokenizer, prefix = self.slot.decoder, self.runtime.tokenizer, self.slot.prefix
        start = time.perf_counter()
        how, timings, cached = self._continue()
        prefix.release()  # until this turn is complete: a failed turn leaves no owner
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
        if saved := prefix.save():
            timings["save_prefix"] = saved
        prefix.claim(self)
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
        decoder, eos = self.slot.decoder, self.runtime.tokenizer.eos_id
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
