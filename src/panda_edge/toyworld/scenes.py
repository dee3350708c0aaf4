"""What each toy video shows and which balanced questions it carries: a pure function of (seed, index).

One event defines a video (a shape crosses the frame, appears, disappears, or two shapes appear one
after the other); its attributes are drawn so each question type's answers balance over the video
index. No pixels here (`render.py`) and no files (`writer.py`).
"""

from __future__ import annotations

import itertools
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TypeVar

import numpy as np

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
# The CLIP mean colour (what the model pads with): it normalizes to about 0, so background patches
# embed to about 0 and the shapes stand out, which a model trained from scratch needs to learn fast.
BACKGROUND = (122, 116, 104)
DIRECTIONS = ("left", "right", "up", "down")
# Of the short side: the shape's bounding box. A shape spans 2-3 of the tiny model's 14-pixel patches, the
# least at which a shape trained from scratch tells the shapes apart (smaller ones gave ~50%).
SIZE_FRACTION = (0.34, 0.42)
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


@dataclass(frozen=True)
class SceneObject:
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
class Scene:
    """Everything needed to render one video and ask about it."""

    index: int
    kind: str
    width: int
    height: int
    background: tuple[int, int, int]
    objects: tuple[SceneObject, ...]
    questions: tuple[tuple[str, str, str], ...]  # (type, question, answer)

    @property
    def video_id(self) -> str:
        return f"toy_{self.index:06d}"


# --- deterministic choices -------------------------------------------------------------------------


def tag(name: str) -> int:
    """A stable integer for a name, to key random streams (Python's hash() is salted per process)."""
    return zlib.crc32(name.encode())


def _balanced(seed: int, key: str, index: int, options: Sequence[T]) -> T:
    """The index-th draw of a stratified sequence: every block of len(options) holds each option once."""
    block, pos = divmod(index, len(options))
    perm = np.random.default_rng([seed, tag(key), block]).permutation(len(options))
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


def plan_scene(seed: int, index: int) -> Scene:
    """The scene and questions of video `index`: a pure function of (seed, index)."""
    kind = KINDS[index % len(KINDS)]
    k = index // len(KINDS)
    statics = STATIC_SETS[k % len(STATIC_SETS)]
    rng = np.random.default_rng([seed, tag("video"), index])

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
        SceneObject(shape=s, color=c, size=z, start=p[0], end=p[1], first=f, last=la)
        for (c, s), z, p, (f, la) in zip(attrs, sizes, paths, times, strict=True)
    )
    questions = _questions(kind, objects, statics, color, shape, direction, first_mentioned)
    return Scene(index, kind, width, height, (r, g, b), objects, questions)


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
    objects: Sequence[SceneObject],
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


def direction(obj: SceneObject) -> str | None:
    """Which way the shape moves (paths run along one axis), or None for one standing still."""
    dx, dy = obj.end[0] - obj.start[0], obj.end[1] - obj.start[1]
    if dx == 0 and dy == 0:
        return None
    return heading(dx, dy)
