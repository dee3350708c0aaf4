"""Writing a toy world: the videos (in a process pool), the train/held-out question files, the
captions and toyworld.json. Each video is a pure function of (seed, index), so the bytes do not
depend on how many processes write them.
"""

from __future__ import annotations

import multiprocessing
import os
from collections import Counter
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from panda_edge.assets import TINY_TRAINING
from panda_edge.fileio import write_json
from panda_edge.host import worker_count
from panda_edge.toyworld.questions import caption_entry, question_entries
from panda_edge.toyworld.render import render
from panda_edge.toyworld.rules import apply_rule, check_rule
from panda_edge.toyworld.scenes import (
    COLORS,
    DIRECTIONS,
    FPS,
    FRAMES,
    KINDS,
    MIN_TRAVEL,
    OTHER_TRAVEL,
    QUESTION_TYPES,
    SHAPES,
    SIZE_FRACTION,
    SIZES,
    Scene,
    plan_scene,
    tag,
)
from panda_edge.video.encode import write_video

FORMAT_VERSION = 3
# toyworld.json names its generator by the module it was first written by: a name in the file format,
# kept so that the same seed still writes the same bytes.
GENERATOR = "panda_edge.video.toyworld"


@dataclass(frozen=True)
class ToyWorldSummary:
    """What `generate` wrote; `to_dict()` gives it as JSON-ready data."""

    videos: int
    train_questions: int
    heldout_questions: int
    per_type: dict[str, int]
    out_dir: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _heldout_videos(seed: int, videos: int, fraction: float) -> set[int]:
    """Held-out video indices: whole blocks of len(KINDS) videos, so each kind is held out equally."""
    blocks = -(-videos // len(KINDS))
    chosen = np.random.default_rng([seed, tag("split")]).permutation(blocks)[: round(blocks * fraction)]
    return {i for b in chosen.tolist() for i in range(b * len(KINDS), min((b + 1) * len(KINDS), videos))}


def _answer_counts(entries: Iterable[dict[str, Any]]) -> dict[str, dict[str, int]]:
    counts: dict[str, Counter[str]] = {t: Counter() for t in QUESTION_TYPES}
    for e in entries:
        counts[e["type"]][e["answer"]] += 1
    return {t: dict(sorted(c.items())) for t, c in counts.items()}


def _parameters(
    seed: int, videos: int, heldout_fraction: float, drill: bool, rule: str | None
) -> dict[str, Any]:
    changed = {} if rule is None else {"rule": rule}  # absent without one: same bytes as before
    return {
        **changed,
        "generator": GENERATOR,
        "format_version": FORMAT_VERSION,
        "seed": seed,
        "videos": videos,
        "heldout_fraction": heldout_fraction,
        "frames": FRAMES,
        "fps": FPS,
        "codec": "libx264",
        "sizes": [list(s) for s in SIZES],
        "colors": {k: list(v) for k, v in COLORS.items()},
        "shapes": list(SHAPES),
        "directions": list(DIRECTIONS),
        "size_fraction": list(SIZE_FRACTION),
        "travel": {"motion": MIN_TRAVEL, "other": OTHER_TRAVEL},
        "kinds": list(KINDS),
        "question_types": list(QUESTION_TYPES),
        "drill_questions": drill,
    }


def _make_video(job: tuple[Path, int, int]) -> Scene:
    """Plan video `index` of world `seed` and write it into `videos_dir`; runs in a worker process."""
    videos_dir, seed, index = job
    scene = plan_scene(seed, index)
    write_video(videos_dir / f"{scene.video_id}.mp4", list(render(scene)), fps=FPS)
    return scene


def generate(
    out_dir: str | os.PathLike[str],
    videos: int = 400,
    seed: int = 0,
    heldout_fraction: float = 0.2,
    progress: Callable[[int], None] | None = None,
    drill: bool = True,
    workers: int | None = None,
    rule: str | None = None,
) -> ToyWorldSummary:
    """Write the videos, the train/held-out question files (split by video) and toyworld.json.

    `progress` is called with the number of videos written so far; `drill` adds the colour and shape
    questions about every object to train.json (see `questions._drill_questions`). Videos are made
    by `workers` processes (default: one per core this process may use); each is a pure function of
    (seed, index), so the bytes do not depend on how many. Files already in `out_dir` are overwritten, not
    removed: use a fresh directory when generating fewer videos than before. `rule` names a changed
    rule (rules.RULES) the questions of one type answer by.
    """
    check_rule(rule)
    if videos < 1:
        raise ValueError(f"videos must be at least 1, got {videos}")
    if seed < 0:
        raise ValueError(f"seed must be non-negative, got {seed}")
    if not 0.0 <= heldout_fraction <= 1.0:
        raise ValueError(f"heldout_fraction must be in [0, 1], got {heldout_fraction}")
    processes = worker_count(workers, videos)
    out = Path(out_dir)
    (out / "videos").mkdir(parents=True, exist_ok=True)
    heldout_ids = _heldout_videos(seed, videos, heldout_fraction)
    train: list[dict[str, Any]] = []
    heldout: list[dict[str, Any]] = []
    captions: list[dict[str, Any]] = []
    jobs = [(out / "videos", seed, i) for i in range(videos)]
    with ExitStack() as stack:
        if processes > 1:
            # spawn, not fork: the caller may hold torch's thread pools, which do not survive a fork.
            pool = ProcessPoolExecutor(processes, mp_context=multiprocessing.get_context("spawn"))
            stack.callback(pool.shutdown, cancel_futures=True)
            scenes = pool.map(_make_video, jobs, chunksize=8)
        else:
            scenes = map(_make_video, jobs)
        for i, scene in enumerate(scenes):
            if i in heldout_ids:
                heldout.extend(apply_rule(e, rule) for e in question_entries(scene))
            else:
                train.extend(apply_rule(e, rule) for e in question_entries(scene, drill=drill))
                captions.append(caption_entry(scene))
            if progress is not None:
                progress(i + 1)
    type_counts = Counter(e["type"] for e in train + heldout)
    per_type = {t: type_counts[t] for t in QUESTION_TYPES}
    write_json(out / "train.json", train)
    write_json(out / "heldout.json", heldout)
    write_json(out / "captions.json", captions)
    counts = {
        "videos": videos,
        "train_videos": videos - len(heldout_ids),
        "heldout_videos": len(heldout_ids),
        "train_questions": len(train),
        "heldout_questions": len(heldout),
        "per_type": per_type,
        "answers": _answer_counts(train + heldout),
    }
    parameters = _parameters(seed, videos, heldout_fraction, drill, rule)
    write_json(out / "toyworld.json", {**parameters, "counts": counts})
    return ToyWorldSummary(videos, len(train), len(heldout), per_type, str(out))


def tiny_training_world(workdir: Path) -> Path:
    """`workdir`/toyworld: the toy world the embedded tiny model was trained on (written once), whose
    held-out split it never saw: the demo's and parity's test set."""
    data = workdir / "toyworld"
    if not (data / "heldout.json").is_file():
        generate(data, videos=TINY_TRAINING["videos"], seed=TINY_TRAINING["seed"])
    return data
