"""LLM and tokenizer parity (docs/design.md §5): llama.cpp on the bundle's GGUFs vs the reference.

Logits: the same token ids through llama.cpp and through transformers' LlamaForCausalLM in fp32,
every position compared (top-1 agreement, max abs difference). Tokenizer: llama.cpp's ids vs
SentencePiece's (the slow Llama tokenizer) chunk by chunk, as the prompt is tokenized: split at
`<image>`, BOS on the first chunk only. No torch here: the reference logits come in as arrays.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from panda_edge.backends import STANDIN_GGUF_TYPE
from panda_edge.prompt import IMAGE_TOKEN_INDEX, PromptTokenizer, build_prompt, split_prompt
from panda_edge.sampling import top2_margin

# Toy-world questions and general text: the prompt's own chunks plus punctuation, digits, unicode,
# and leading/trailing/multiple spaces, where SentencePiece ports usually drift.
QUESTIONS = (
    "What color is the ring?",
    "Which direction does the red square move?",
    "How many shapes are in the video at the end?",
    "Which shape appeared first, the ring or the cross?",
    "Describe the video in detail.",
)
GENERAL_TEXT = (
    "Hello, world! It's 3:45 p.m. on 2025-06-11; temperature: -3.5°C (≈ 26°F).",
    "  leading spaces and trailing spaces  ",
    "tabs\tand\nnew lines\n\nand   several   spaces",
    "Ünïcödé: naïve café, 東京, Привет, 🙂👍 and emoji.",
    "Numbers 0 1 12 123 1234 12345 3.14159 1e-5 100%",
    "Punctuation: ... !? ,;:'\"()[]{}<>/\\|@#$^&*-_=+~`",
    "</s> <s> <unk> look like special tokens but are plain text here",
    "USER: what is in the video? ASSISTANT: a red square moving left</s>",
    " ",
    "\n",
)


def parity_sequences(tokenizer: PromptTokenizer, questions: Sequence[str] = QUESTIONS) -> list[list[int]]:
    """Prompt ids of each question with the `<image>` places removed, plus each general text (BOS first)."""
    seqs = [[i for i in tokenizer.prompt_ids(build_prompt(q)) if i != IMAGE_TOKEN_INDEX] for q in questions]
    seqs += [tokenizer.encode(text, bos=True) for text in GENERAL_TEXT]
    return seqs


def tokenizer_chunks(questions: Sequence[str] = QUESTIONS) -> list[tuple[str, bool]]:
    """(text, bos) pairs: every prompt chunk as the runtime tokenizes it, then the general texts."""
    chunks: list[tuple[str, bool]] = []
    for q in questions:
        chunks += [(c, i == 0) for i, c in enumerate(split_prompt(build_prompt(q)))]
        history = [(q, "a red ring")]
        chunks += [(c, i == 0) for i, c in enumerate(split_prompt(build_prompt("And then?", 8, history)))]
    chunks += [(text, False) for text in GENERAL_TEXT]
    chunks += [(text, True) for text in GENERAL_TEXT]
    return list(dict.fromkeys(chunks))


@dataclass(frozen=True)
class LogitsParity:
    gguf_type: str
    positions: int
    top1_agreement: float
    max_abs_diff: float
    mean_abs_diff: float
    reference_max_abs: float
    required_top1: float | None  # None: reported, not judged
    required_max_rel: float | None = None  # max abs diff / reference max abs, when judged by error size
    reference_margin_p01: float = 0.0  # 1st percentile of the reference's top-1 minus top-2 logit

    @property
    def judged(self) -> bool:
        return self.required_top1 is not None or self.required_max_rel is not None

    @property
    def passed(self) -> bool:
        top1 = self.required_top1 is None or self.top1_agreement >= self.required_top1
        bound = None if self.required_max_rel is None else self.required_max_rel * self.reference_max_abs
        return top1 and (bound is None or self.max_abs_diff <= bound)

    def to_dict(self) -> dict[str, Any]:
        return {
            "top1_agreement": self.top1_agreement,
            "max_abs_diff": self.max_abs_diff,
            "mean_abs_diff": self.mean_abs_diff,
            "reference_max_abs": self.reference_max_abs,
            "reference_margin_p01": self.reference_margin_p01,
            "positions": self.positions,
            "passed": self.passed,
            **({"required_max_rel": self.required_max_rel} if self.required_max_rel is not None else {}),
        }

    def __str__(self) -> str:
        verdict = "" if not self.judged else (" ok" if self.passed else " FAILED")
        return (
            f"llm {self.gguf_type}: top-1 {self.top1_agreement:.4f} over {self.positions} positions, "
            f"max abs diff {self.max_abs_diff:.3g} (reference max {self.reference_max_abs:.3g}){verdict}"
        )


# f32 must pick the reference's token everywhere (docs/design.md §5); other types are reported.
REQUIRED_TOP1: dict[str, float] = {"f32": 1.0}
# An f16 GGUF standing in for a missing f32 one (a 7B f32 GGUF is 27 GB) over weights stored in float16
# holds the very weights; llama.cpp's CPU f16 matmuls round the activations to float16 (11 significant
# bits), which moves every logit a little. Where each logit moves by at most d, only a pair closer than
# 2d can swap, so top-1 agreement says how flat the logits are (random 7B weights: the 1st percentile
# of top-1 minus top-2 is ~1e-3), not whether the export is right; the size of the error does. Judged:
# max abs diff at most 1% of the reference's largest logit (measured at 7B: 0.36%; a missing q/k
# permutation or a wrong tensor gives tens of percent).
F16_STANDIN_MAX_REL = 1e-2


def compare_logits(
    gguf_type: str,
    reference: Sequence[np.ndarray],
    candidate: Sequence[np.ndarray],
    required_top1: float | None = None,
    required_max_rel: float | None = None,
) -> LogitsParity:
    ref = np.concatenate([np.asarray(r, np.float32) for r in reference])
    cand = np.concatenate([np.asarray(c, np.float32) for c in candidate])
    if ref.shape != cand.shape:
        raise ValueError(f"logits shapes differ: reference {ref.shape}, {gguf_type} {cand.shape}")
    diff = np.abs(ref - cand)
    return LogitsParity(
        gguf_type,
        positions=len(ref),
        top1_agreement=float(np.mean(ref.argmax(-1) == cand.argmax(-1))),
        max_abs_diff=float(diff.max()),
        mean_abs_diff=float(diff.mean()),
        reference_max_abs=float(np.abs(ref).max()),
        required_top1=required_top1 if required_top1 is not None else REQUIRED_TOP1.get(gguf_type),
        required_max_rel=required_max_rel,
        reference_margin_p01=float(np.percentile(top2_margin(ref), 1)),
    )


def llm_parity(
    reference: Sequence[np.ndarray],
    ggufs: Mapping[str, str | Path],
    sequences: Sequence[Sequence[int]],
    threads: int = 1,
    on_gguf: Callable[[int], None] | None = None,
    kv_cache: str = "f32",
    f16_standin: bool = False,
) -> dict[str, LogitsParity]:
    """Per GGUF type: llama.cpp logits vs the reference's logits (one array per sequence).

    One thread by default: the numbers do not depend on it, and ggml's threads spin at barriers, so
    on a busy 2-core machine two threads ran the tiny model 45x slower than one (0.75 s vs 17 ms).
    The KV cache is f32 by default so the numbers measure the conversion; llama.cpp's default f16
    cache alone moves f32 logits by ~1e-2 (measured on the tiny model). `f16_standin`: the f16 GGUF is
    judged in place of a missing f32 one, by F16_STANDIN_MAX_REL.
    """
    from panda_edge.runtime.llm import LlamaCppModel

    ref = list(reference)
    n_ctx = max(64, max(len(s) for s in sequences))
    results = {}
    for i, (gguf_type, path) in enumerate(ggufs.items()):
        with LlamaCppModel(path, n_ctx=n_ctx, threads=threads, kv_cache=kv_cache) as model:
            max_rel = F16_STANDIN_MAX_REL if f16_standin and gguf_type == STANDIN_GGUF_TYPE else None
            results[gguf_type] = compare_logits(
                gguf_type, ref, [model.logits(s) for s in sequences], required_max_rel=max_rel
            )
        if on_gguf is not None:
            on_gguf(i + 1)
    return results


@dataclass
class TokenizerParity:
    chunks: int = 0
    mismatches: list[dict[str, Any]] = field(default_factory=list)
    others: dict[str, Any] = field(default_factory=dict)  # e.g. transformers' LlamaTokenizer

    @property
    def identical(self) -> bool:
        return not self.mismatches

    @property
    def passed(self) -> bool:
        return self.identical

    def to_dict(self) -> dict[str, Any]:
        return {
            "identical": self.identical,
            "chunks": self.chunks,
            "mismatches": self.mismatches,
            **self.others,
        }

    def __str__(self) -> str:
        verdict = "identical" if self.identical else f"{len(self.mismatches)} mismatches FAILED"
        return f"tokenizer: llama.cpp vs SentencePiece on {self.chunks} chunks: {verdict}"


def tokenizer_parity(
    gguf: str | Path, tokenizer_file: str | Path, chunks: Sequence[tuple[str, bool]] | None = None
) -> TokenizerParity:
    """llama.cpp's ids vs `PromptTokenizer.encode` (SentencePiece) for each (text, bos) chunk."""
    from panda_edge.runtime.llm import LlamaCppModel

    tokenizer = PromptTokenizer(tokenizer_file)
    chunks = tokenizer_chunks() if chunks is None else chunks
    result = TokenizerParity(chunks=len(chunks))
    with LlamaCppModel(gguf, n_ctx=64, threads=1, vocab_only=True) as model:
        for text, bos in chunks:
            expected, got = tokenizer.encode(text, bos=bos), model.tokenize(text, bos=bos)
            if expected != got:
                result.mismatches.append(
                    {"text": text, "bos": bos, "sentencepiece": expected, "llama.cpp": got}
                )
    return result


def hf_tokenizer_agreement(
    tokenizer_file: str | Path, chunks: Sequence[tuple[str, bool]] | None = None
) -> dict:
    """transformers' LlamaTokenizer on the same chunks, when it loads this tokenizer.model."""
    tokenizer = PromptTokenizer(tokenizer_file)
    chunks = tokenizer_chunks() if chunks is None else chunks
    try:
        from transformers import LlamaTokenizer

        hf = LlamaTokenizer.from_pretrained(str(Path(tokenizer_file).parent), legacy=True)
    except Exception as exc:  # any failure to load is a finding to report, not a crash
        return {"loaded": False, "reason": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    mismatches = []
    for text, bos in chunks:
        ids = hf.encode(text, add_special_tokens=False, split_special_tokens=True)
        ids = [tokenizer.bos_id, *ids] if bos else ids
        if ids != tokenizer.encode(text, bos=bos):
            mismatches.append(
                {"text": text, "transformers": ids, "sentencepiece": tokenizer.encode(text, bos=bos)}
            )
    return {"loaded": True, "class": type(hf).__name__, "identical": not mismatches, "mismatches": mismatches}
