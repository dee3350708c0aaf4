"""A small Llama-style SentencePiece tokenizer for models panda-edge trains itself.

Same kind as the Vicuna/Llama `tokenizer.model`: BPE, byte fallback, digits split, a dummy prefix
space, no whitespace folding, ids unk=0, bos=1, eos=2, so the prompt tokenizes the way the official
code tokenizes it for the released model.
"""

from __future__ import annotations

import io
from collections.abc import Iterable
from pathlib import Path

from panda_edge.fileio import atomic_path
from panda_edge.prompt import ROLES, SEP2, SYSTEM_PROMPT


def template_text() -> list[str]:
    """Text of the prompt template, so its pieces are in the vocabulary."""
    return [SYSTEM_PROMPT, f"{ROLES[0]}: ", f" {ROLES[1]}:", SEP2]


def train_tokenizer(texts: Iterable[str], out_file: str | Path, vocab_size: int = 512) -> Path:
    """Train on `texts` (+ the prompt template) and write `out_file` atomically."""
    import sentencepiece as spm

    lines = [t.replace("\n", " ").strip() for t in [*template_text(), *texts]]
    model = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter([line for line in lines if line]),
        model_writer=model,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,
        split_digits=True,
        add_dummy_prefix=True,
        remove_extra_whitespaces=False,
        normalization_rule_name="identity",
        allow_whitespace_only_pieces=True,
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        character_coverage=1.0,
        hard_vocab_limit=False,
        num_threads=1,
        minloglevel=2,
    )
    out_file = Path(out_file)
    with atomic_path(out_file) as tmp:
        tmp.write_bytes(model.getvalue())
    return out_file
