"""Training data: Video-ChatGPT / Valley conversation JSON -> token ids with labels, and frames.

Each conversation becomes the official `videopanda_v1` prompt with the answers in place; only the
answer tokens and their `</s>` are trained on (labels elsewhere are IGNORE), as in the official
`preprocess_v1`. Videos are decoded and pre-processed once and kept as float tensors.

A packed example holds one video's prefix (system prompt, "USER:", the frames) once and every
question about it as a branch after it: each branch sees the prefix and itself only, at the
positions a first question has. Packing the turns one after another instead lets a later answer be
copied from an earlier turn ("What color is the ring? red" ... "What shape is the red object?"),
and a model trained from scratch learns that copying long before it learns to look at the video.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import torch

from panda_edge.config import VisionConfig
from panda_edge.errors import PandaError
from panda_edge.prompt import IMAGE_TOKEN, PromptTokenizer

IGNORE = -100
# Mirrored copies of a training clip (augmentation): its frames flipped left-right ("h"), upside down
# ("v") or both, and the words that name a direction swapped in its text. Exact for the toy world, whose
# shapes are all mirror-symmetric; "" is the clip as it is. A video's index in a mirrored copy k is
# k * videos + its index (`MIRRORS` order), the same in every stage.
MIRRORS: dict[str, dict[str, str]] = {
    "": {},
    "h": {"left": "right", "right": "left"},
    "v": {"up": "down", "down": "up"},
    "hv": {"left": "right", "right": "left", "up": "down", "down": "up"},
}


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
    branches: list[int] | None = None  # per id: 0 for the shared prefix, k for the k-th branch


def read_conversations(path: str | Path) -> list[Conversation]:
    """Entries with `video` and `conversations` ([{from: human|gpt, value}], `<video>` marks the clip)."""
    try:
        return read_conversations_from(json.loads(Path(path).read_text()))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PandaError(f"{path}: not a Video-ChatGPT style QA file ({exc})") from None


def read_qa(path: str | Path, videos_dir: str | Path) -> list[Conversation]:
    """Training conversations from either form `panda eval` reads: Video-ChatGPT entries
    (`conversations`, every turn kept) or flat `question`/`answer` entries naming `video` (a file) or,
    as MSVD-QA / MSRVTT-QA / ActivityNet-QA do, `video_id` (the file in `videos_dir` of that stem,
    whatever its extension)."""
    try:
        entries = json.loads(Path(path).read_text())
        if entries and all("conversations" in e for e in entries):
            return read_conversations(path)
        stems = {p.stem: p.name for p in sorted(Path(videos_dir).iterdir()) if p.is_file()}
        out = []
        for entry in entries:
            if "conversations" in entry:
                out += read_conversations_from([entry])
                continue
            video = str(entry["video"] if "video" in entry else entry["video_id"])
            question = str(entry["question"]).replace("<video>", "").strip()
            turn = (question, str(entry["answer"]))
            out.append(Conversation(stems.get(video, video), (turn,), entry.get("type", "")))
        return out
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise PandaError(f"{path}: not a QA file with video/question/answer entries ({exc})") from None


def read_conversations_from(entries: Sequence[dict]) -> list[Conversation]:
    """Video-ChatGPT entries (already parsed) as conversations."""
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


def build_examples(
    conversations: Sequence[Conversation],
    tokenizer: PromptTokenizer,
    video_index: dict[str, int],
    n_frames: int,
    packed: bool = False,
    text_only: bool = False,
) -> list[Example]:
    """One example per question, or (packed) one per video with each question as a branch."""
    frames = 0 if text_only else n_frames
    examples = []
    groups: dict[str, list[tuple[str, str]]] = {}
    for conv in conversations:
        if packed:
            groups.setdefault(conv.video, []).extend(conv.turns)
            continue
        for turn in conv.turns:
            ids, is_answer = tokenizer.conversation_ids([turn], frames)
            examples.append(_example(conv.video, video_index, text_only, ids, is_answer))
    prefix = tokenizer.video_prefix_ids(frames)
    for video, turns in groups.items():
        ids, is_answer, branches = list(prefix), [False] * len(prefix), [0] * len(prefix)
        for k, turn in enumerate(turns, start=1):
            full, answer = tokenizer.conversation_ids([turn], frames)  # starts with `prefix`
            ids += full[len(prefix) :]
            is_answer += answer[len(prefix) :]
            branches += [k] * (len(full) - len(prefix))
        examples.append(_example(video, video_index, text_only, ids, is_answer, branches))
    return examples


def _example(
    video: str,
    video_index: dict[str, int],
    text_only: bool,
    ids: list[int],
    is_answer: list[bool],
    branches: list[int] | None = None,
) -> Example:
    labels = [i if answer else IGNORE for i, answer in zip(ids, is_answer, strict=True)]
    return Example(-1 if text_only else video_index[video], ids, labels, branches)


def load_frames(
    videos_dir: Path,
    names: Sequence[str],
    vision: VisionConfig,
    progress: Callable[[int], None] | None = None,
) -> torch.Tensor:
    """Decode and pre-process each video once -> (videos, frames, 4, S, S) float32."""
    from panda_edge.video import load_videos

    return torch.from_numpy(load_videos([videos_dir / name for name in names], vision, progress))


def mirror_conversations(conversations: Sequence[Conversation], mirror: str) -> list[Conversation]:
    """The conversations about the `mirror` copy of their clips: direction words swapped (MIRRORS)."""
    words = MIRRORS[mirror]
    if not words:
        return list(conversations)
    pattern = re.compile(r"\b(" + "|".join(words) + r")\b")

    def swap(text: str) -> str:
        return pattern.sub(lambda m: words[m.group(1)], text)

    return [replace(c, turns=tuple((swap(q), swap(a)) for q, a in c.turns)) for c in conversations]


def mirror_frames(frames: torch.Tensor, mirror: str) -> torch.Tensor:
    """Frames (..., H, W) flipped as `mirror` says ("h": left-right, "v": upside down, "hv": both)."""
    dims = [dim for key, dim in (("h", -1), ("v", -2)) if key in mirror]
    return frames.flip(dims) if dims else frames
