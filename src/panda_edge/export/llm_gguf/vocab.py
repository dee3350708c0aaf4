"""The SentencePiece vocabulary and the prompt format as GGUF metadata (no torch).

llama.cpp's "llama" tokenizer reproduces SentencePiece BPE from the pieces, their scores and types,
so the GGUF carries them as `tokenizer.model` defines them; ids must match the embedding rows.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gguf

from panda_edge.errors import CheckpointError
from panda_edge.prompt import ROLES, SEP, SEP2, SYSTEM_PROMPT


@dataclass(frozen=True)
class Vocab:
    tokens: list[str]
    scores: list[float]
    types: list[int]  # gguf.TokenType values
    bos_id: int
    eos_id: int
    unk_id: int
    pad_id: int  # -1: none

    def __len__(self) -> int:
        return len(self.tokens)


def read_vocab(model_file: str | Path) -> Vocab:
    import sentencepiece as spm

    try:
        sp = spm.SentencePieceProcessor(model_file=str(model_file))
    except (OSError, RuntimeError) as exc:
        raise CheckpointError(f"{model_file}: not a SentencePiece model ({exc})") from None
    tokens, scores, types = [], [], []
    for i in range(sp.get_piece_size()):
        tokens.append(sp.id_to_piece(i))
        scores.append(float(sp.get_score(i)))
        types.append(int(_token_type(sp, i)))
    return Vocab(tokens, scores, types, sp.bos_id(), sp.eos_id(), sp.unk_id(), sp.pad_id())


def _token_type(sp, i: int) -> gguf.TokenType:
    if sp.is_unknown(i):
        return gguf.TokenType.UNKNOWN
    if sp.is_control(i):
        return gguf.TokenType.CONTROL
    if sp.is_byte(i):
        return gguf.TokenType.BYTE
    if sp.is_unused(i):
        return gguf.TokenType.UNUSED
    return gguf.TokenType.NORMAL


def chat_template() -> str:
    """Jinja for `videopanda_v1` (Vicuna v1): system, then "USER: q ASSISTANT: a</s>" turns.

    The frames' `<image>` places are part of the first user message; a runtime that feeds
    embeddings splits the prompt there (prompt.json), so the template only fixes the text around them.
    """
    user, assistant = ROLES
    return (
        "{% if messages[0]['role'] == 'system' %}"
        "{% set system = messages[0]['content'] %}{% set turns = messages[1:] %}"
        f"{{% else %}}{{% set system = {SYSTEM_PROMPT!r} %}}{{% set turns = messages %}}{{% endif %}}"
        f"{{{{ bos_token + system + {SEP!r} }}}}"
        "{% for message in turns %}"
        f"{{% if message['role'] == 'user' %}}{{{{ {user + ': '!r} + message['content'] + {SEP!r} }}}}"
        f"{{% else %}}{{{{ {assistant + ': '!r} + message['content'] + {SEP2!r} }}}}{{% endif %}}"
        "{% endfor %}"
        f"{{% if add_generation_prompt %}}{{{{ {assistant + ':'!r} }}}}{{% endif %}}"
    )


def add_vocab(writer: gguf.GGUFWriter, vocab: Vocab) -> None:
    writer.add_tokenizer_model("llama")
    writer.add_tokenizer_pre("default")
    writer.add_token_list(vocab.tokens)
    writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    writer.add_bos_token_id(vocab.bos_id)
    writer.add_eos_token_id(vocab.eos_id)
    if vocab.unk_id >= 0:
        writer.add_unk_token_id(vocab.unk_id)
    if vocab.pad_id >= 0:
        writer.add_pad_token_id(vocab.pad_id)
    writer.add_add_bos_token(True)
    writer.add_add_eos_token(False)
    writer.add_add_space_prefix(True)
    writer.add_chat_template(chat_template())
