"""The `videopanda_v1` prompt (Vicuna v1 style) and its chunked tokenization, without torch.

The official code splits the prompt at `<image>`, tokenizes each text chunk on its own with the
SentencePiece (slow) Llama tokenizer, keeps BOS on the first chunk only, and puts one placeholder id
per `<image>`; frame t's visual tokens replace the t-th placeholder.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

# Official `conv_videopanda_v1` (videopanda/conversation.py). docs/design.md §2. The generic Vicuna v1
# system text says "user"; the released model was trained and evaluated with this one ("human").
SYSTEM_PROMPT = (
    "A chat between a curious human and an artificial intelligence assistant. "
    "The assistant gives helpful, detailed, and polite answers to the human's questions."
)
ROLES = ("USER", "ASSISTANT")
SEP = " "
SEP2 = "</s>"
IMAGE_TOKEN = "<image>"
IMAGE_TOKEN_INDEX = -200


def build_prompt(
    question: str, n_frames: int = 8, history: Sequence[tuple[str, str]] = (), system: str = SYSTEM_PROMPT
) -> str:
    """Prompt for `question` about a video of `n_frames` frames, after earlier (question, answer) turns.

    The frames go before the first question only, as in the official evaluation code.
    """
    turns = [*history, (question, None)]
    out = system + SEP
    for i, (user, answer) in enumerate(turns):
        text = (IMAGE_TOKEN * n_frames + "\n" + user) if i == 0 else user
        out += f"{ROLES[0]}: {text}{SEP}"
        out += f"{ROLES[1]}: {answer}{SEP2}" if answer is not None else f"{ROLES[1]}:"
    return out


def split_prompt(prompt: str) -> list[str]:
    """Text chunks around each `<image>`; n images give n + 1 chunks (some may be empty)."""
    return prompt.split(IMAGE_TOKEN)


class PromptTokenizer:
    """SentencePiece tokenizer with the official chunked prompt encoding (ids of `tokenizer.model`)."""

    def __init__(self, model_file: str | Path) -> None:
        import sentencepiece as spm

        self.model_file = Path(model_file)
        self.sp = spm.SentencePieceProcessor(model_file=str(model_file))
        self.bos_id = self.sp.bos_id()
        self.eos_id = self.sp.eos_id()

    @property
    def vocab_size(self) -> int:
        return self.sp.get_piece_size()

    def encode(self, text: str, bos: bool = False) -> list[int]:
        """Plain text -> ids, as the slow Llama tokenizer does for text without special tokens."""
        ids = self.sp.encode(text) if text else []
        return [self.bos_id, *ids] if bos else ids

    def prompt_ids(self, prompt: str) -> list[int]:
        """Chunked encoding: BOS + chunk0 + IMAGE + chunk1 + IMAGE + ... (IMAGE = IMAGE_TOKEN_INDEX)."""
        ids: list[int] = []
        for i, chunk in enumerate(split_prompt(prompt)):
            if i > 0:
                ids.append(IMAGE_TOKEN_INDEX)
            ids.extend(self.encode(chunk, bos=i == 0))
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        return self.sp.decode([i for i in ids if i >= 0])

    def video_prefix_ids(self, n_frames: int, system: str = SYSTEM_PROMPT) -> list[int]:
        """The part of every conversation about a video that precedes its first question: system
        prompt, "USER: " and one placeholder per frame. A runtime computes it once per video."""
        return self.prompt_ids(system + SEP + f"{ROLES[0]}: " + IMAGE_TOKEN * n_frames)

    def turn_ids(self, question: str, first: bool) -> list[int]:
        """The ids a question adds after the video prefix (first) or after the previous `</s>`."""
        return self.encode(_turn_text(question, first))

    def conversation_ids(
        self, turns: Sequence[tuple[str, str | None]], n_frames: int, system: str = SYSTEM_PROMPT
    ) -> tuple[list[int], list[bool]]:
        """ids of a conversation, and which of them are answer tokens (what training learns).

        The last answer may be None: the ids then end with "ASSISTANT:", ready to generate. The
        first turn equals `prompt_ids(build_prompt(...))`; later turns are encoded piece by piece
        after `</s>` (SentencePiece's dummy prefix included, as the slow tokenizer does).
        """
        ids = self.video_prefix_ids(n_frames, system)
        is_answer = [False] * len(ids)
        for i, (question, answer) in enumerate(turns):
            prompt = self.turn_ids(question, first=i == 0)
            ids += prompt
            is_answer += [False] * len(prompt)
            if answer is None:
                break
            target = self.answer_ids(question, answer, first=i == 0)
            ids += target
            is_answer += [True] * len(target)
        return ids, is_answer

    def answer_ids(self, question: str, answer: str, first: bool) -> list[int]:
        """The ids of `answer` after its question's `turn_ids`, closing `</s>` included: encoded in
        context, as the slow tokenizer splits the whole turn, when that keeps the question's ids."""
        prompt = self.turn_ids(question, first)
        full = self.encode(_turn_text(question, first) + " " + answer)
        target = full[len(prompt) :] if full[: len(prompt)] == prompt else self.encode(" " + answer)
        return [*target, self.eos_id]


def _turn_text(question: str, first: bool) -> str:
    return ("\n" + question if first else f"{ROLES[0]}: " + question) + f"{SEP}{ROLES[1]}:"


class TextStream:
    """Generated ids -> text pieces as they become printable (a multi-byte character may span tokens)."""

    def __init__(self, tokenizer: PromptTokenizer, on_text: Callable[[str], None] | None = None) -> None:
        self.tokenizer = tokenizer
        self.on_text = on_text
        self.tokens: list[int] = []
        self._shown = ""

    def push(self, token: int) -> str:
        """Add one generated id; returns (and hands to `on_text`) the new printable text, maybe ''."""
        self.tokens.append(token)
        text = self.tokenizer.decode(self.tokens)
        if len(text) <= len(self._shown) or text.endswith("\ufffd"):
            return ""
        piece, self._shown = text[len(self._shown) :], text
        if self.on_text is not None:
            self.on_text(piece)
        return piece

    def answer(self) -> str:
        return self.tokenizer.decode(self.tokens).strip()
