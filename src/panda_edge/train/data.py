"""Training data: Video-ChatGPT / Valley conversation JSON -> token ids with labels, and frames.

Each conversation becomes the official `videopanda_v1` prompt with the answers in place; only the
answer tokens and their `</s>` are trained on (labels elsewhere are IGNORE), as in the official
`preprocess_v1`. Videos are decoded and pre-processed once and kept as float tensors.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from panda_edge.config import VisionConfig
from panda_edge.errors import PandaError
from panda_edge.prompt import IMAGE_TOKEN, PromptTokenizer

IGNORE = -100


@dataclass(frozen=True)
class Conversation:
    video: str  # file name relative to the videos directory
    turns: tuple[tuple[str, str], ...]  # (question, answer)
    kind: str = ""


@dataclass(frozen=True)
class Example:
    video: int  # index into the frames tensor, -1 for text only
    ids: list[int]  # with IMAGE_TOKEN_INDEX placeholders
    labels: list[int]  # same length as ids


def read_conversations(path: str | Path) -> list[Conversation]:
    """Entries with `video` and `conversations` ([{from: human|gpt, value}], `<video>` marks the clip)."""
    try:
        entries = json.loads(Path(path).read_text())
        out = []
        for entry in entries:
            values = [turn["value"] for turn in entry["conversations"]]
            questions = [v.replace("<video>", "").replace(IMAGE_TOKEN, "").strip() for v in values[0::2]]
            out.append(
                Conversation(
                    entry["video"], tuple(zip(questions, values[1::2], strict=False)), entry.get("type", "")
                )
            )
        return out
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PandaError(f"{path}: not a Video-ChatGPT style QA file ({exc})") from None


def build_examples(
    conversations: Sequence[Conversation],
    tokenizer: PromptTokenizer,
    video_index: dict[str, int],
    n_frames: int,
    packed: bool = False,
    text_only: bool = False,
) -> list[Example]:
    """One example per question, or (packed) one per video with all its questions as turns."""
    examples = []
    groups: dict[str, list[tuple[str, str]]] = {}
    for conv in conversations:
        if packed:
            groups.setdefault(conv.video, []).extend(conv.turns)
        else:
            for turn in conv.turns:
                video = -1 if text_only else video_index[conv.video]
                examples.append(_example(tokenizer, [turn], 0 if text_only else n_frames, video))
    for video, turns in groups.items():
        frames = 0 if text_only else n_frames
        examples.append(_example(tokenizer, turns, frames, -1 if text_only else video_index[video]))
    return examples


def _example(
    tokenizer: PromptTokenizer, turns: Sequence[tuple[str, str]], n_frames: int, video: int
) -> Example:
    ids, is_answer = tokenizer.conversation_ids(turns, n_frames)
    return Example(video, ids, [i if answer else IGNORE for i, answer in zip(ids, is_answer, strict=True)])


def load_frames(
    videos_dir: Path,
    names: Sequence[str],
    vision: VisionConfig,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Decode and pre-process each video once -> (videos, frames, 4, S, S) float32."""
    from panda_edge.video import load_video

    out = np.zeros((len(names), vision.video_frames, 4, vision.image_size, vision.image_size), np.float32)
    for i, name in enumerate(names):
        out[i] = load_video(videos_dir / name, vision)
        if progress is not None:
            progress(i + 1)
    return torch.from_numpy(out)
