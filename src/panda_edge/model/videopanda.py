"""The PyTorch reference Video-Panda: STAB + projector + Llama, with the official prompt and weights.

Every export and runtime path is judged against this module, so it follows the official code
(jh-yi/Video-Panda) in semantics and weight names, and runs in float32 by default.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from panda_edge.config import (
    CONFIG_FILE,
    PREPROCESSOR_FILE,
    LlmConfig,
    ModelConfig,
    official_config_dict,
    preprocessor_dict,
    read_config,
)
from panda_edge.errors import CheckpointError
from panda_edge.model.checkpoint import (
    TOKENIZER_FILE,
    VIDEO_PROJECTOR,
    VIDEO_TOWER,
    atomic_path,
    check_names,
    normalize_names,
    write_json,
    write_weights,
)
from panda_edge.model.loading import (
    ReferencePrecision,
    build_on_meta,
    load_reference,
    stored_llm_dtype,
    working_bytes,
)
from panda_edge.model.stab import STAB, build_projector
from panda_edge.prompt import IMAGE_TOKEN_INDEX, PromptTokenizer, TextStream
from panda_edge.sampling import GREEDY, Sampling, pick_token, top2_margin


def llama_config(llm: LlmConfig):
    from transformers import LlamaConfig

    return LlamaConfig(
        vocab_size=llm.vocab_size,
        hidden_size=llm.hidden_size,
        intermediate_size=llm.intermediate_size,
        num_hidden_layers=llm.num_hidden_layers,
        num_attention_heads=llm.num_attention_heads,
        num_key_value_heads=llm.num_key_value_heads,
        max_position_embeddings=llm.max_position_embeddings,
        rms_norm_eps=llm.rms_norm_eps,
        rope_parameters={"rope_type": "default", "rope_theta": llm.rope_theta},
        bos_token_id=llm.bos_token_id,
        eos_token_id=llm.eos_token_id,
        pad_token_id=llm.pad_token_id,
        tie_word_embeddings=False,
        attn_implementation="sdpa",
    )


def load_llm_reference(
    path: str | Path, precision: ReferencePrecision | None = None, tokens: int = 256, attention: str = "eager"
):
    """The checkpoint's LlamaForCausalLM alone (LLM parity): no vision weights are read."""
    from transformers import LlamaForCausalLM

    precision = precision or ReferencePrecision()
    directory = resolve_checkpoint(path)
    config = read_config(directory)
    hf_config = llama_config(config.llm)
    hf_config._attn_implementation = attention
    llm = build_on_meta(lambda: LlamaForCausalLM(hf_config))
    working = working_bytes(config, precision, tokens, vision=False, llm=True)
    load_reference({"": llm}, directory, precision, "the LLM reference", working, widen="")
    return llm.eval()


def resolve_checkpoint(path: str | Path) -> Path:
    """`tiny` names the embedded default model; anything else is a checkpoint directory."""
    if str(path) == "tiny":
        from panda_edge.assets import tiny_checkpoint

        return tiny_checkpoint()
    directory = Path(path)
    if not directory.is_dir():
        raise CheckpointError(f"{path}: no such checkpoint directory")
    return directory


class VideoPanda(nn.Module):
    def __init__(self, config: ModelConfig, tokenizer: PromptTokenizer | None = None) -> None:
        super().__init__()
        from transformers import LlamaForCausalLM

        self.config = config
        self.stab = STAB(config.vision)
        self.projector = build_projector(config.projector_type, config.vision.width, config.llm.hidden_size)
        self.llm = LlamaForCausalLM(llama_config(config.llm))
        self.tokenizer = tokenizer

    # --- weights in the official layout ------------------------------------------------------------

    def official_state_dict(self) -> dict[str, Tensor]:
        out = {VIDEO_TOWER + k: v for k, v in self.stab.state_dict().items()}
        out.update({VIDEO_PROJECTOR + k: v for k, v in self.projector.state_dict().items()})
        out.update(self.llm.state_dict())
        return out

    def load_official_state_dict(self, state: dict[str, Tensor]) -> list[str]:
        """Load official-named weights; returns the names that were skipped (training-only)."""
        normalized = normalize_names(state)
        expected = {k: v.shape for k, v in self.official_state_dict().items()}
        check_names(expected, normalized.state)
        parts = {VIDEO_TOWER: self.stab, VIDEO_PROJECTOR: self.projector}
        with torch.no_grad():
            for prefix, module in parts.items():
                sub = {k[len(prefix) :]: v for k, v in normalized.state.items() if k.startswith(prefix)}
                module.load_state_dict(sub, strict=True)
            llm = {k: v for k, v in normalized.state.items() if not k.startswith(tuple(parts))}
            self.llm.load_state_dict(llm, strict=True)
        return normalized.skipped

    @classmethod
    def from_pretrained(
        cls, path: str | Path, precision: ReferencePrecision | None = None, tokens: int = 2400
    ) -> VideoPanda:
        """The whole reference, built on the meta device and filled shard by shard (model/loading.py).

        `tokens`: the longest sequence it will run, for the memory check made before loading.
        """
        precision = precision or ReferencePrecision()
        directory = resolve_checkpoint(path)
        config = read_config(directory)
        tokenizer_file = directory / TOKENIZER_FILE
        if not tokenizer_file.is_file():
            raise CheckpointError(f"{directory}: no {TOKENIZER_FILE}")
        model = build_on_meta(lambda: cls(config, PromptTokenizer(tokenizer_file)))
        parts = {VIDEO_TOWER: model.stab, VIDEO_PROJECTOR: model.projector, "": model.llm}
        working = working_bytes(config, precision, tokens, vision=True, llm=True)
        model.skipped_weights = load_reference(
            parts, directory, precision, "the PyTorch reference", working, widen=""
        )
        model.precision = precision
        return model.eval()

    def save_pretrained(
        self, path: str | Path, max_shard_bytes: int | None = None, dtype: torch.dtype | None = None
    ) -> None:
        """Write the released layout: config.json, preprocessor config, safetensors, tokenizer.model.

        `dtype` stores floating-point weights in another precision (the released model uses bf16).
        """
        directory = Path(path)
        directory.mkdir(parents=True, exist_ok=True)
        state = self.official_state_dict()
        if dtype is not None:
            state = {k: v.to(dtype) if v.is_floating_point() else v for k, v in state.items()}
        write_weights(directory, state, max_shard_bytes)
        if self.tokenizer is not None:
            with atomic_path(directory / TOKENIZER_FILE) as tmp:
                tmp.write_bytes(self.tokenizer.model_file.read_bytes())
        write_json(directory / PREPROCESSOR_FILE, preprocessor_dict(self.config.vision))
        write_json(directory / CONFIG_FILE, official_config_dict(self.config))

    # --- vision ------------------------------------------------------------------------------------

    def encode_frames(self, pixel_values: Tensor | np.ndarray, project: bool = True) -> list[Tensor]:
        """(n_frames, 4, S, S) official frames -> one (tokens, llm_hidden) tensor per frame (`project`
        False: STAB's tokens before the projector, vision width)."""
        frames = torch.as_tensor(pixel_values)
        v = self.config.vision
        n = frames.shape[0]
        if frames.ndim != 4 or frames.shape[1] != 4 or n % v.chunk_frames:
            raise ValueError(
                f"expected (n_frames, 4, {v.image_size}, {v.image_size}) with n_frames a multiple of "
                f"{v.chunk_frames}, got {tuple(frames.shape)}"
            )
        weight = self.stab.patch_embedding.weight
        chunks = frames.to(weight.device, weight.dtype).reshape(
            n // v.chunk_frames, v.chunk_frames, *frames.shape[1:]
        )
        return self.stab(chunks, self.projector if project else None)

    def load_frames(self, video_or_frames: str | Path | Tensor | np.ndarray) -> Tensor:
        if isinstance(video_or_frames, (str, Path)):
            from panda_edge.video import load_video

            return torch.from_numpy(load_video(video_or_frames, self.config.vision))
        return torch.as_tensor(video_or_frames)

    # --- language ----------------------------------------------------------------------------------

    def _require_tokenizer(self) -> PromptTokenizer:
        if self.tokenizer is None:
            raise CheckpointError(
                "this model has no tokenizer.model; load it with VideoPanda.from_pretrained"
            )
        return self.tokenizer

    def prompt_embeddings(self, ids: Sequence[int], visual: Sequence[Tensor]) -> Tensor:
        """Token ids with IMAGE_TOKEN_INDEX placeholders -> (1, L, hidden); frame t fills placeholder t."""
        embed = self.llm.get_input_embeddings()
        dtype = self.stab.patch_embedding.weight.dtype  # the compute dtype (embeddings may be kept 16-bit)
        parts, text, frame = [], [], 0
        for i in [*ids, None]:
            if (i is None or i == IMAGE_TOKEN_INDEX) and text:
                parts.append(embed(torch.tensor(text, device=embed.weight.device)).to(dtype))
                text = []
            if i == IMAGE_TOKEN_INDEX:
                if frame >= len(visual):
                    raise ValueError(f"the prompt has more <image> places than the {len(visual)} frames")
                parts.append(visual[frame].to(dtype))
                frame += 1
            elif i is not None:
                text.append(i)
        if frame != len(visual):
            raise ValueError(f"the prompt has {frame} <image> places for {len(visual)} frames")
        return torch.cat(parts)[None]

    @torch.inference_mode()
    def stream_generate(
        self,
        video_or_frames: str | Path | Tensor | np.ndarray,
        question: str,
        max_new_tokens: int = 64,
        sampling: Sampling = GREEDY,
        history: Sequence[tuple[str, str]] = (),
        margins: list[tuple[float, float]] | None = None,
    ) -> Iterator[int]:
        """Yield generated token ids (greedy unless `sampling` says otherwise), stopping at `</s>`.

        `history` holds earlier (question, answer) turns about the same video. `margins`, when given,
        receives (top-1 minus top-2 logit, largest |logit|) for each step: how close a choice was.
        """
        tokenizer = self._require_tokenizer()
        visual = self.encode_frames(self.load_frames(video_or_frames))
        ids, _ = tokenizer.conversation_ids([*history, (question, None)], n_frames=len(visual))
        embeds = self.prompt_embeddings(ids, visual)
        rng = None if sampling.greedy else sampling.generator()
        device = embeds.device
        # logits at the last position only: all-position logits of a video prefix are 0.3 GB at 7B
        out = self.llm(inputs_embeds=embeds, use_cache=True, logits_to_keep=1)
        for _ in range(max_new_tokens):
            logits = out.logits[0, -1].float().cpu().numpy()
            if margins is not None:
                margins.append((float(top2_margin(logits)), float(np.abs(logits).max())))
            token = pick_token(logits, sampling, rng)
            if token == tokenizer.eos_id:
                return
            yield token
            out = self.llm(
                input_ids=torch.tensor([[token]], device=device),
                cache=out.cache,
                use_cache=True,
                logits_to_keep=1,
            )

    def generate(
        self,
        video_or_frames: str | Path | Tensor | np.ndarray,
        question: str,
        max_new_tokens: int = 64,
        sampling: Sampling = GREEDY,
        on_text: Callable[[str], None] | None = None,
        history: Sequence[tuple[str, str]] = (),
    ) -> str:
        """The answer as text; `on_text` receives it piece by piece as tokens arrive."""
        return self._stream(video_or_frames, question, max_new_tokens, sampling, on_text, history).answer()

    def _stream(
        self,
        video_or_frames: str | Path | Tensor | np.ndarray,
        question: str,
        max_new_tokens: int,
        sampling: Sampling = GREEDY,
        on_text: Callable[[str], None] | None = None,
        history: Sequence[tuple[str, str]] = (),
    ) -> TextStream:
        text = TextStream(self._require_tokenizer(), on_text)
        for token in self.stream_generate(video_or_frames, question, max_new_tokens, sampling, history):
            text.push(token)
        return text


def answer_video(
    model: VideoPanda,
    video: str | Path,
    question: str,
    max_new_tokens: int = 64,
    on_text: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """The greedy answer to `question` about a video file, as `panda generate` reports it: the text,
    its token ids, and the seconds from the decoded video to the last token."""
    frames = model.load_frames(video)
    start = time.perf_counter()
    text = model._stream(frames, question, max_new_tokens, on_text=on_text)
    return {"answer": text.answer(), "tokens": text.tokens, "seconds": time.perf_counter() - start}


def reference_answerer(model: VideoPanda, max_new_tokens: int = 16) -> Callable[[Path, str], str]:
    """(video, question) -> greedy answer; a video's frames are decoded once for all its questions."""
    from functools import lru_cache

    frames = lru_cache(maxsize=4)(model.load_frames)
    return lambda video, question: model.generate(
        frames(Path(video)), question, max_new_tokens=max_new_tokens
    )


def describe_reference(checkpoint: str | Path, precision: ReferencePrecision) -> dict[str, str]:
    """What a report says of the reference: compute dtype, device, how its weights are stored."""
    return {
        "dtype": precision.dtype,
        "device": precision.device,
        "weights_stored": stored_llm_dtype(resolve_checkpoint(checkpoint)),
    }
