"""A synthetic "toy world" of short videos with question-answer pairs, to train a tiny Video-Panda.

Each video shows 1-3 distinct shapes on a grey background, each sliding in a straight line; one event
defines the video (a shape crosses the frame, appears, disappears, or two shapes appear one after the
other). Questions have one short
canonical answer so normalized exact match can score them. Answers are balanced within each
question type by stratified sampling over the video index, so guessing the majority answer does
not pay. Everything is a pure function of (seed, video index): the same seed gives the same bytes.
"""

from __future__ import annotations

import itertools
import multiprocessing
import os
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ProcessPoolExecutor
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from panda_edge.fileio import write_json
from panda_edge.host import worker_count
from panda_edge.video.encode import write_video

T = TypeVar("T")

FRAMES = 16
FPS = 8
# (width, height): square, landscape and portrait 4:3, and 3:2 landscape. The 4:3 sizes are exactly what
# the tiny model's pre-processing makes of any 4:3 video (112 x 84), so no resampling blurs the shapes.
SIZES: tuple[tuple[int, int], ...] = ((112, 112), (112, 84), (84, 112), (144, 96))
# Far apart in RGB (and in YUV), so they survive h264 4:2:0 and downscaling, and all brighter than the
# background: a shape's outline then has the same sign in every colour, so one learned edge filter
# serves all four (saturated colours darker and lighter than the grey left shape at chance).
COLORS: dict[str, tuple[int, int, int]] = {
    "red": (255, 110, 110),
    "green": (110, 235, 110),
    "blue": (120, 150, 255),
    "yellow": (255, 240, 80),
}
# Shapes that differ inside every 14-pixel patch they cover (solid, hollow, thin bars), not only at
# their corners: a circle, a square and a triangle were still at chance after the 5-minute training.
SHAPES = ("square", "ring", "cross")
RING_INNER = 0.55  # the ring's hole, of its outer radius
CROSS_BAR = 1 / 3  # the cross's bar thickness, of its size
# The CLIP mean colour (what the model pads with): it normalizes to about 0, so background patches
# embed to about 0 and the shapes stand out, which a model trained from scratch needs to learn fast.
BACKGROUND = (122, 116, 104)
DIRECTIONS = ("left", "right", "up", "down")
# Of the short side: the shape's bounding box. A shape spans 2-3 of the tiny model's 14-pixel patches, the
# least at which a shape trained from scratch tells the shapes apart (smaller ones gave ~50%).
SIZE_FRACTION = (0.34, 0.42)
CAPTION_PROMPT = "Describe the video."
QUESTION_TYPES = ("color", "shape", "count", "motion", "order", "appear")

# Video i has kind KINDS[i % 4]: every block of 4 consecutive videos holds each kind once.
KINDS = ("motion", "appear", "order", "disappear")
PRIMARY_TYPE = {"motion": "motion", "appear": "appear", "disappear": "appear", "order": "order"}
# Static questions carried by the k-th video of a kind (k = i // 4): 2-4 questions per video.
STATIC_SETS: tuple[tuple[str, ...], ...] = (("color", "shape", "count"), ("count",), ("color", "shape"))
# Shapes at the end of the video, per kind. The appear/order/disappear kinds cannot have every
# count, so motion and appear cover the rest: over one video of each kind, 1, 2, 3 are equally likely.
COUNT_OPTIONS: dict[str, tuple[int, ...]] = {
    "motion": (1, 2, 3),
    "appear": (1, 3),
    "order": (2, 3),
    "disappear": (1, 2),
}
# Frame windows chosen so 8 frames sampled uniformly from 16 (0,2,..,14 or 0,2,4,6,9,11,13,15)
# see the change: an appearing shape is absent in frames 0-4 and present from frame 10 on.
APPEAR_FIRST = (5, 10)  # first visible frame of an appearing shape
DISAPPEAR_LAST = (5, 10)  # last visible frame of a disappearing shape
ORDER_FIRST = (0, 3)  # first visible frame of the earlier shape in an "order" video
ORDER_SECOND = (8, 11)  # ... and of the later one
MARGIN = 2.0  # pixels between a shape and the frame edge
GAP = 3.0  # pixels between two shapes' boxes
MIN_TRAVEL = 0.45  # the shape of a motion video crosses at least this fraction of the frame
OTHER_TRAVEL = 0.3  # every other shape moves this fraction, where the layout leaves room
FORMAT_VERSION = 3


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


@dataclass(frozen=True)
class _Object:
    """One shape: its centre moves linearly from `start` to `end`, visible in frames first..last."""

    shape: str
    color: str
    size: float
    start: tuple[float, float]
    end: tuple[float, float]
    first: int = 0
    last: int = FRAMES - 1

    def center(self, t: int) -> tuple[float, float]:
        a = t / (FRAMES - 1)
        (x0, y0), (x1, y1) = self.start, self.end
        return (x0 + a * (x1 - x0), y0 + a * (y1 - y0))

    def visible(self, t: int) -> bool:
        return self.first <= t <= self.last

    @property
    def name(self) -> str:
        return f"{self.color} {self.shape}"


@dataclass(frozen=True)
class _Scene:
    """Everything needed to render one video and ask about it."""

    index: int
    kind: str
    width: int
    height: int
    background: tuple[int, int, int]
    objects: tuple[_Object, ...]
    questions: tuple[tuple[str, str, str], ...]  # (type, question, answer)

    @property
    def video_id(self) -> str:
        return f"toy_{self.index:06d}"


# --- deterministic choices -------------------------------------------------------------------------


def _tag(name: str) -> int:
    """A stable integer for a name, to key random streams (Python's hash() is salted per process)."""
    return zlib.crc32(name.encode())


def _balanced(seed: int, key: str, index: int, options: Sequence[T]) -> T:
    """The index-th draw of a stratified sequence: every block of len(options) holds each option once."""
    block, pos = divmod(index, len(options))
    perm = np.random.default_rng([seed, _tag(key), block]).permutation(len(options))
    return options[int(perm[pos])]


def _carrier_index(k: int, qtype: str) -> int:
    """How many earlier videos of the same kind carry a `qtype` question (so its answers balance)."""
    cycle, pos = divmod(k, len(STATIC_SETS))
    per_cycle = sum(qtype in s for s in STATIC_SETS)
    return cycle * per_cycle + sum(qtype in s for s in STATIC_SETS[:pos])


def _assign_attributes(
    rng: np.random.Generator, n: int, color: str | None, shape: str | None, first_shape: str | None
) -> list[tuple[str, str]]:
    """(color, shape) for n objects, all colors and all shapes distinct, meeting the balanced targets.

    Distinct colors and shapes make "the ring", "the blue object" and "the red square" unambiguous.
    Object 0 is the one the video's event happens to; `first_shape` pins its shape.
    """
    options = [
        list(zip(cs, ss, strict=True))
        for cs in itertools.permutations(COLORS, n)
        for ss in itertools.permutations(SHAPES, n)
        if (color is None or color in cs)
        and (shape is None or shape in ss)
        and (first_shape is None or ss[0] == first_shape)
    ]
    return options[int(rng.integers(len(options)))]


# --- layout ----------------------------------------------------------------------------------------

Box = tuple[float, float, float, float]  # x0, y0, x1, y1


def _overlaps(a: Box, b: Box) -> bool:
    return a[0] < b[2] + GAP and b[0] < a[2] + GAP and a[1] < b[3] + GAP and b[1] < a[3] + GAP


def _swept_box(start: tuple[float, float], end: tuple[float, float], size: float) -> Box:
    (x0, y0), (x1, y1), h = start, end, size / 2
    return (min(x0, x1) - h, min(y0, y1) - h, max(x0, x1) + h, max(y0, y1) + h)


def _uniform_center(rng: np.random.Generator, size: float, width: int, height: int) -> tuple[float, float]:
    lo = size / 2 + MARGIN
    return (float(rng.uniform(lo, width - lo)), float(rng.uniform(lo, height - lo)))


def _path(
    rng: np.random.Generator, direction: str, size: float, width: int, height: int, far: bool = True
) -> tuple[tuple[float, float], tuple[float, float]]:
    """Start and end centres of a shape moving steadily in `direction`: across most of the frame
    (`far`), or OTHER_TRAVEL of it."""
    horizontal = direction in ("left", "right")
    along, across = (width, height) if horizontal else (height, width)
    lo = size / 2 + MARGIN
    room = along - 2 * lo
    if far:
        travel = min(room, max(MIN_TRAVEL * along, float(rng.uniform(0.7, 1.0)) * room))
    else:
        travel = min(room, OTHER_TRAVEL * along)
    a = float(rng.uniform(lo, lo + room - travel))
    b = a + travel
    if direction in ("left", "up"):
        a, b = b, a
    c = float(rng.uniform(lo, across - lo))
    return ((a, c), (b, c)) if horizontal else ((c, a), (c, b))


def _layout(
    rng: np.random.Generator, sizes: list[float], direction: str | None, width: int, height: int
) -> list[tuple[tuple[float, float], tuple[float, float]]]:
    """Start/end centres for each object; object 0 crosses the frame if `direction` is set, the others
    move a shorter way in random directions (or stand still where no such layout is found after many
    tries). No two ever overlap."""
    for attempt in range(1000):
        paths = []
        boxes: list[Box] = []
        for i, size in enumerate(sizes):
            for tries in range(100):
                if i == 0 and direction is not None:
                    start, end = _path(rng, direction, size, width, height)
                elif attempt < 500 and tries < 60:
                    way = DIRECTIONS[int(rng.integers(len(DIRECTIONS)))]
                    start, end = _path(rng, way, size, width, height, far=False)
                else:
                    start = end = _uniform_center(rng, size, width, height)
                box = _swept_box(start, end, size)
                if not any(_overlaps(box, other) for other in boxes):
                    paths.append((start, end))
                    boxes.append(box)
                    break
            else:
                break
        if len(paths) == len(sizes):
            return paths
    raise RuntimeError(f"could not place {len(sizes)} shapes in {width}x{height}")


# --- planning --------------------------------------------------------------------------------------


def _plan(seed: int, index: int) -> _Scene:
    """The scene and questions of video `index`: a pure function of (seed, index)."""
    kind = KINDS[index % len(KINDS)]
    k = index // len(KINDS)
    statics = STATIC_SETS[k % len(STATIC_SETS)]
    rng = np.random.default_rng([seed, _tag("video"), index])

    def balanced(name: str, options: Sequence[T], i: int = k) -> T:
        return _balanced(seed, f"{kind}/{name}", i, options)

    counts = COUNT_OPTIONS[kind]
    if "count" in statics:
        count = balanced("count", counts, _carrier_index(k, "count"))
    else:
        count = counts[int(rng.integers(len(counts)))]
    n = count + 1 if kind == "disappear" else count
    color = balanced("color", list(COLORS), _carrier_index(k, "color")) if "color" in statics else None
    shape = balanced("shape", SHAPES, _carrier_index(k, "shape")) if "shape" in statics else None
    direction = balanced("direction", DIRECTIONS) if kind == "motion" else None
    first_shape = balanced("first", SHAPES) if kind == "order" else None
    first_mentioned = balanced("mention", (True, False)) if kind == "order" else None

    width, height = SIZES[int(rng.integers(len(SIZES)))]
    r, g, b = (int(v) + int(d) for v, d in zip(BACKGROUND, rng.integers(-4, 5, size=3), strict=True))
    attrs = _assign_attributes(rng, n, color, shape, first_shape)
    short = min(width, height)
    sizes = [float(rng.uniform(*SIZE_FRACTION)) * short for _ in range(n)]
    paths = _layout(rng, sizes, direction, width, height)
    times = _visibility(rng, kind, n)
    objects = tuple(
        _Object(shape=s, color=c, size=z, start=p[0], end=p[1], first=f, last=la)
        for (c, s), z, p, (f, la) in zip(attrs, sizes, paths, times, strict=True)
    )
    questions = _questions(kind, objects, statics, color, shape, direction, first_mentioned)
    return _Scene(index, kind, width, height, (r, g, b), objects, questions)


def _visibility(rng: np.random.Generator, kind: str, n: int) -> list[tuple[int, int]]:
    """(first, last) visible frame per object; only objects 0 (and 1 for "order") change."""
    times = [(0, FRAMES - 1)] * n

    def pick(bounds: tuple[int, int]) -> int:
        return int(rng.integers(bounds[0], bounds[1] + 1))

    if kind == "appear":
        times[0] = (pick(APPEAR_FIRST), FRAMES - 1)
    elif kind == "disappear":
        times[0] = (0, pick(DISAPPEAR_LAST))
    elif kind == "order":
        times[0] = (pick(ORDER_FIRST), FRAMES - 1)
        times[1] = (pick(ORDER_SECOND), FRAMES - 1)
    return times


def _questions(
    kind: str,
    objects: Sequence[_Object],
    statics: Sequence[str],
    color: str | None,
    shape: str | None,
    direction: str | None,
    first_mentioned: bool | None,
) -> tuple[tuple[str, str, str], ...]:
    """(type, question, answer) triples in QUESTION_TYPES order: the kind's event plus the static ones."""
    event = objects[0]
    asked: dict[str, tuple[str, str]] = {}
    if "color" in statics:
        target = next(o for o in objects if o.color == color)
        asked["color"] = (f"What color is the {target.shape}?", target.color)
    if "shape" in statics:
        target = next(o for o in objects if o.shape == shape)
        asked["shape"] = (f"What shape is the {target.color} object?", target.shape)
    if "count" in statics:
        end = sum(o.visible(FRAMES - 1) for o in objects)
        asked["count"] = ("How many shapes are in the video at the end?", str(end))
    if kind == "motion":
        asked["motion"] = (f"Which direction does the {event.name} move?", str(direction))
    elif kind == "order":
        a, b = (event.shape, objects[1].shape) if first_mentioned else (objects[1].shape, event.shape)
        asked["order"] = (f"Which shape appeared first, the {a} or the {b}?", event.shape)
    else:
        asked["appear"] = (f"Does the {event.name} appear or disappear?", kind)
    return tuple((t, *asked[t]) for t in QUESTION_TYPES if t in asked)


def heading(dx: float, dy: float) -> str:
    """The direction of a shift in image coordinates (y grows downward) along its larger axis."""
    if abs(dx) >= abs(dy):
        return "right" if dx > 0 else "left"
    return "down" if dy > 0 else "up"


def direction(obj: _Object) -> str | None:
    """Which way the shape moves (paths run along one axis), or None for one standing still."""
    dx, dy = obj.end[0] - obj.start[0], obj.end[1] - obj.start[1]
    if dx == 0 and dy == 0:
        return None
    return heading(dx, dy)


def caption(scene: _Scene) -> str:
    """A dense description of the clip: every object in order of appearance, with what it does.

    The toy analogue of the video-text pairs of the paper's first two stages; each question's answer
    can be read from it.
    """
    parts = []
    for obj in sorted(scene.objects, key=lambda o: (o.first, o.start[0])):
        events = []
        if obj.first > 0:
            events.append("appears")
        elif obj.last < FRAMES - 1:
            events.append("disappears")
        way = direction(obj)
        if way is not None:
            events.append(f"moves {way}")
        parts.append(" ".join([obj.name, " and ".join(events)]).strip())
    return ", ".join(parts) + "."


# --- rendering and writing -------------------------------------------------------------------------


def _mask(obj: _Object, center: tuple[float, float], xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """Pixels (by centre) inside the shape, whose bounding box is `size` on each side."""
    dx, dy, h = np.abs(xs - center[0]), np.abs(ys - center[1]), obj.size / 2
    if obj.shape == "square":
        return (dx <= h) & (dy <= h)
    if obj.shape == "ring":
        r2 = dx * dx + dy * dy
        return (r2 <= h * h) & (r2 >= (RING_INNER * h) ** 2)
    bar = CROSS_BAR * h
    return ((dx <= h) & (dy <= bar)) | ((dy <= h) & (dx <= bar))


def _render(scene: _Scene) -> np.ndarray:
    """All frames of the scene as a (FRAMES, H, W, 3) uint8 RGB array."""
    ys, xs = np.mgrid[0 : scene.height, 0 : scene.width].astype(np.float32) + 0.5
    frames = np.empty((FRAMES, scene.height, scene.width, 3), np.uint8)
    frames[:] = scene.background
    for t in range(FRAMES):
        for obj in scene.objects:
            if obj.visible(t):
                frames[t][_mask(obj, obj.center(t), xs, ys)] = COLORS[obj.color]
    return frames


def _caption_entry(scene: _Scene) -> dict[str, Any]:
    text = caption(scene)
    return {
        "id": f"{scene.video_id}_caption",
        "video": f"{scene.video_id}.mp4",
        "type": "caption",
        "conversations": [
            {"from": "human", "value": f"<video>\n{CAPTION_PROMPT}"},
            {"from": "gpt", "value": text},
        ],
        "question": CAPTION_PROMPT,
        "answer": text,
    }


def _drill_questions(scene: _Scene) -> list[tuple[str, str, str]]:
    """A colour, a shape and a direction question for every object the balanced questions leave out.

    Training videos only: "What color is the ring?" needs the model to find the ring among the
    other shapes, and the balanced set asks that about one object in some videos; asking it about
    every object gives 3-4x the examples of this binding for the cost of a few text tokens. Motion
    questions about every moving shape give 7x the examples of the one in motion videos.
    """
    asked = {(t, a) for t, _, a in scene.questions}
    out = []
    for obj in scene.objects:
        way = direction(obj)
        if way is not None and not (scene.kind == "motion" and obj is scene.objects[0]):
            out.append(("motion", f"Which direction does the {obj.name} move?", way))
        if ("color", obj.color) not in asked:
            out.append(("color", f"What color is the {obj.shape}?", obj.color))
        if ("shape", obj.shape) not in asked:
            out.append(("shape", f"What shape is the {obj.color} object?", obj.shape))
    return out


def _entry(scene: _Scene, entry_id: str, qtype: str, question: str, answer: str) -> dict[str, Any]:
    return {
        "id": entry_id,
        "video": f"{scene.video_id}.mp4",
        "type": qtype,
        "conversations": [
            {"from": "human", "value": f"<video>\n{question}"},
            {"from": "gpt", "value": answer},
        ],
        "question": question,
        "answer": answer,
    }


def _entries(scene: _Scene, drill: bool = False) -> list[dict[str, Any]]:
    """The scene's questions as Video-ChatGPT / Valley conversation entries (+ drill ones if asked)."""
    out = [_entry(scene, f"{scene.video_id}_{t}", t, q, a) for t, q, a in scene.questions]
    if drill:
        out += [
            _entry(scene, f"{scene.video_id}_{t}_drill{k}", t, q, a)
            for k, (t, q, a) in enumerate(_drill_questions(scene))
        ]
    return out


def _heldout_videos(seed: int, videos: int, fraction: float) -> set[int]:
    """Held-out video indices: whole blocks of len(KINDS) videos, so each kind is held out equally."""
    blocks = -(-videos // len(KINDS))
    chosen = np.random.default_rng([seed, _tag("split")]).permutation(blocks)[: round(blocks * fraction)]
    return {i for b in chosen.tolist() for i in range(b * len(KINDS), min((b + 1) * len(KINDS), videos))}


def _answer_counts(entries: Iterable[dict[str, Any]]) -> dict[str, dict[str, int]]:
    counts: dict[str, Counter[str]] = {t: Counter() for t in QUESTION_TYPES}
    for e in entries:
        counts[e["type"]][e["answer"]] += 1
    return {t: dict(sorted(c.items())) for t, c in counts.items()}


def _parameters(seed: int, videos: int, heldout_fraction: float, drill: bool) -> dict[str, Any]:
    return {
        "generator": "panda_edge.video.toyworld",
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


def _make_video(job: tuple[Path, int, int]) -> _Scene:
    """Plan video `index` of world `seed` and write it into `videos_dir`; runs in a worker process."""
    videos_dir, seed, index = job
    scene = _plan(seed, index)
    write_video(videos_dir / f"{scene.video_id}.mp4", list(_render(scene)), fps=FPS)
    return scene


def generate(
    out_dir: str | os.PathLike[str],
    videos: int = 400,
    seed: int = 0,
    heldout_fraction: float = 0.2,
    progress: Callable[[int], None] | None = None,
    drill: bool = True,
    workers: int | None = None,
) -> ToyWorldSummary:
    """Write the videos, the train/held-out question files (split by video) and toyworld.json.

    `progress` is called with the number of videos written so far; `drill` adds the colour and shape
    questions about every object to train.json (see `_drill_questions`). Videos are made by `workers`
    processes (default: one per core this process may use); each is a pure function of (seed,
    index), so the bytes do not depend on how many. Files already in `out_dir` are overwritten, not
    removed: use a fresh directory when generating fewer videos than before.
    """
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
                heldout.extend(_entries(scene))
            else:
                train.extend(_entries(scene, drill=drill))
                captions.append(_caption_entry(scene))
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
    parameters = _parameters(seed, videos, heldout_fraction, drill)
    write_json(out / "toyworld.json", {**parameters, "counts": counts})
    return ToyWorldSummary(videos, len(train), len(heldout), per_type, str(out))


def corpus_text(qa_entries: Iterable[dict[str, Any]]) -> list[str]:
    """Each entry's question then its answer, in order (text for tokenizer training; no `<video>`)."""
    return [text for e in qa_entries for text in (e["question"], e["answer"])]
