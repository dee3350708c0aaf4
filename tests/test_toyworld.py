"""The toy world: files, splits, balance, determinism, and that the labels match the decoded pixels."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import av
import numpy as np
import pytest

from panda_edge.toyworld import questions, scenes, writer
from panda_edge.toyworld.render import render
from panda_edge.video.encode import write_video

VIDEOS = 24
SAMPLED = list(range(0, scenes.FRAMES, 2))  # what a model that takes 8 of the 16 frames sees
OPTIONS = {
    "color": set(scenes.COLORS),
    "shape": set(scenes.SHAPES),
    "count": {"1", "2", "3"},
    "motion": set(scenes.DIRECTIONS),
    "order": set(scenes.SHAPES),
    "appear": {"appear", "disappear"},
}

Entry = dict[str, Any]


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, writer.ToyWorldSummary]:
    out = tmp_path_factory.mktemp("toy") / "seed0"
    return out, writer.generate(out, videos=VIDEOS, seed=0)


@pytest.fixture(scope="module")
def entries(world: tuple[Path, writer.ToyWorldSummary]) -> list[Entry]:
    out, _ = world
    return _load(out, "train.json") + _load(out, "heldout.json")


def _load(out: Path, name: str) -> Any:
    return json.loads((out / name).read_text(encoding="utf-8"))


def _frames(out: Path, video: str) -> list[np.ndarray]:
    with av.open(str(out / "videos" / video)) as container:
        return [f.to_ndarray(format="rgb24") for f in container.decode(video=0)]


def _distance(frame: np.ndarray, rgb: Any) -> np.ndarray:
    diff = frame.astype(np.int32) - np.asarray(rgb, np.int32)
    return np.sqrt((diff * diff).sum(-1))


def _mask(frame: np.ndarray, color: str) -> np.ndarray:
    """Pixels clearly of this colour (the codec blends edges, so those may be left out)."""
    return _distance(frame, scenes.COLORS[color]) < 60


def _present(frame: np.ndarray, color: str) -> bool:
    return int(_mask(frame, color).sum()) >= 20


def _absent(frame: np.ndarray, color: str) -> bool:
    return int(_mask(frame, color).sum()) < 5


def _centroid(frame: np.ndarray, color: str) -> np.ndarray:
    ys, xs = np.nonzero(_mask(frame, color))
    return np.array([xs.mean(), ys.mean()])


def _fill_shape(frame: np.ndarray, color: str) -> str:
    """Tell the shape from its bounding box: a square fills it; a ring's centre is empty, a cross's not."""
    ys, xs = np.nonzero(_mask(frame, color))
    window = frame[max(ys.min() - 2, 0) : ys.max() + 3, max(xs.min() - 2, 0) : xs.max() + 3]  # no other shape
    rgb = np.array(scenes.COLORS[color])
    half_way = _distance(np.median(frame, axis=(0, 1)), rgb) / 2  # the median pixel is background
    ys, xs = np.nonzero(_distance(window, rgb) < half_way)  # edge pixels blended 50/50 are the true edge
    fill = len(xs) / ((xs.max() - xs.min() + 1) * (ys.max() - ys.min() + 1))
    if fill > 0.92:
        return "square"
    centre = window[(ys.min() + ys.max()) // 2, (xs.min() + xs.max()) // 2]
    return "cross" if _distance(centre, rgb) < half_way else "ring"


def _color_in(question: str) -> str:
    return next(c for c in scenes.COLORS if f" {c} " in question)


def _named(question: str) -> tuple[str, str]:
    """The two shapes of "Which shape appeared first, the ring or the cross?", in order."""
    words = question.removesuffix("?").split()
    return words[-4], words[-1]


def _sha256s(out: Path) -> dict[str, str]:
    return {
        str(p.relative_to(out)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in out.rglob("*")
        if p.is_file()
    }


# --- checks against pixels, reusable on a full-size set ---------------------------------------------


def check_motion(out: Path, entries: list[Entry]) -> int:
    """The shape's colour centroid moves steadily the stated way while it is seen, across >= 40% of the
    frame (>= 25% for the other shapes, which drill questions ask about, when seen throughout)."""
    checked = 0
    for e in (e for e in entries if e["type"] == "motion"):
        travel = 0.25 if "_drill" in e["id"] else 0.4
        frames = _frames(out, e["video"])
        color, height, width = _color_in(e["question"]), *frames[0].shape[:2]
        seen = [t for t in SAMPLED if _present(frames[t], color)]
        assert len(seen) >= 2, e["id"]
        path = np.array([_centroid(frames[t], color) for t in seen])
        axis, sign = {"left": (0, -1), "right": (0, 1), "up": (1, -1), "down": (1, 1)}[e["answer"]]
        steps = sign * np.diff(path[:, axis])
        assert (steps > 0).all(), (e["id"], path)
        if len(seen) == len(SAMPLED):
            assert sign * (path[-1, axis] - path[0, axis]) >= travel * (width, height)[axis], e["id"]
        assert np.abs(path[:, 1 - axis] - path[0, 1 - axis]).max() < 1.5, e["id"]
        checked += 1
    return checked


def check_appear(out: Path, entries: list[Entry]) -> int:
    """An appearing shape is absent in the first sampled third and present at the end; and vice versa."""
    checked = 0
    for e in (e for e in entries if e["type"] == "appear"):
        frames, color = _frames(out, e["video"]), _color_in(e["question"])
        early, late = [frames[t] for t in (0, 2, 4)], [frames[t] for t in (11, 12, 13, 14, 15)]
        if e["answer"] == "disappear":
            early, late = late, early
        assert all(_absent(f, color) for f in early), e["id"]
        assert all(_present(f, color) for f in late), e["id"]
        checked += 1
    return checked


def check_count(out: Path, entries: list[Entry]) -> int:
    """The answer is the number of shape colours in the last frame."""
    for e in (e for e in entries if e["type"] == "count"):
        last = _frames(out, e["video"])[-1]
        assert str(sum(_present(last, c) for c in scenes.COLORS)) == e["answer"], e["id"]
    return sum(e["type"] == "count" for e in entries)


def check_color_shape(out: Path, entries: list[Entry]) -> int:
    """The colour asked about is drawn as the shape named, whichever of the two the question gives."""
    checked = 0
    for e in (e for e in entries if e["type"] in ("color", "shape")):
        if e["type"] == "color":
            color, shape = e["answer"], e["question"].removeprefix("What color is the ").removesuffix("?")
        else:
            color, shape = _color_in(e["question"]), e["answer"]
        frames = [f for f in _frames(out, e["video"]) if _present(f, color)]
        assert frames, e["id"]
        # The frame showing most of the colour: the codec smears the frame just before a shape vanishes.
        clearest = max(frames, key=lambda f: int(_mask(f, color).sum()))
        assert _fill_shape(clearest, color) == shape, e["id"]
        checked += 1
    return checked


def check_order(out: Path, entries: list[Entry], seed: int) -> int:
    """In the sampled frames the answer's shape shows up clearly (>= 2 samples) before the other."""
    checked = 0
    for e in (e for e in entries if e["type"] == "order"):
        scene = scenes.plan_scene(seed, int(e["video"][4:10]))
        color_of = {o.shape: o.color for o in scene.objects}
        first, second = e["answer"], next(s for s in _named(e["question"]) if s != e["answer"])
        frames = [_frames(out, e["video"])[t] for t in SAMPLED]
        seen = {s: next(i for i, f in enumerate(frames) if _present(f, color_of[s])) for s in (first, second)}
        assert seen[second] - seen[first] >= 2, (e["id"], seen)
        checked += 1
    return checked


# --- tests -----------------------------------------------------------------------------------------


def test_files_and_summary(world: tuple[Path, writer.ToyWorldSummary], entries: list[Entry]) -> None:
    out, summary = world
    assert sorted(p.name for p in (out / "videos").iterdir()) == [f"toy_{i:06d}.mp4" for i in range(VIDEOS)]
    assert not [p for p in out.rglob(".*") if p.is_file()], "temp files left behind"
    assert summary.videos == VIDEOS and summary.out_dir == str(out)
    assert summary.train_questions == len(_load(out, "train.json"))
    assert summary.heldout_questions == len(_load(out, "heldout.json"))
    assert summary.per_type == dict(Counter(e["type"] for e in entries))
    assert json.loads(json.dumps(summary.to_dict())) == summary.to_dict()
    params = _load(out, "toyworld.json")
    assert (params["seed"], params["videos"], params["heldout_fraction"]) == (0, VIDEOS, 0.2)
    assert params["counts"]["per_type"] == summary.per_type


def test_split_is_by_video(world: tuple[Path, writer.ToyWorldSummary]) -> None:
    out, _ = world
    train = {e["video"] for e in _load(out, "train.json")}
    heldout = {e["video"] for e in _load(out, "heldout.json")}
    assert train and heldout and not train & heldout
    assert len(train | heldout) == VIDEOS
    assert len(heldout) == 4  # one block of the six: each kind once


def test_schema(entries: list[Entry]) -> None:
    assert len({e["id"] for e in entries}) == len(entries)
    per_video: dict[str, list[str]] = defaultdict(list)
    for e in entries:
        assert list(e) == ["id", "video", "type", "conversations", "question", "answer"]
        base = f"{e['video'].removesuffix('.mp4')}_{e['type']}"
        if e["id"] != base:  # drill questions (tested below) are not part of the balanced set
            assert e["id"].startswith(f"{base}_drill"), e["id"]
            continue
        assert e["conversations"] == [
            {"from": "human", "value": f"<video>\n{e['question']}"},
            {"from": "gpt", "value": e["answer"]},
        ]
        assert e["answer"] in OPTIONS[e["type"]], e
        per_video[e["video"]].append(e["type"])
    assert len(per_video) == VIDEOS
    for types in per_video.values():
        assert 2 <= len(types) <= 4 and len(set(types)) == len(types)
        assert sum(t in ("motion", "order", "appear") for t in types) == 1


def test_drill_questions_ask_about_every_object_in_training_videos(
    world: tuple[Path, writer.ToyWorldSummary],
) -> None:
    """Each training video asks the colour and the shape of each of its objects exactly once, and the
    direction of each moving one; held-out videos keep only the balanced questions."""
    out, _ = world
    train, heldout = _load(out, "train.json"), _load(out, "heldout.json")
    assert not any("_drill" in e["id"] for e in heldout)
    asked: dict[str, Counter[tuple[str, str]]] = defaultdict(Counter)
    for e in train:
        if e["type"] in ("color", "shape"):
            asked[e["video"]][(e["type"], e["answer"])] += 1
        elif e["type"] == "motion":
            asked[e["video"]][(e["type"], _color_in(e["question"]))] += 1
    for video, counts in asked.items():
        scene = scenes.plan_scene(0, int(video[4:10]))
        expected = {("color", o.color) for o in scene.objects} | {("shape", o.shape) for o in scene.objects}
        expected |= {("motion", o.color) for o in scene.objects if scenes.direction(o) is not None}
        assert set(counts) == expected and set(counts.values()) == {1}, video
    assert len(asked) == len({e["video"] for e in train})


def test_every_type_and_answer_present(entries: list[Entry]) -> None:
    answers: dict[str, set[str]] = defaultdict(set)
    for e in entries:
        answers[e["type"]].add(e["answer"])
    assert answers == OPTIONS


def test_answers_balanced_at_full_size() -> None:
    """Planning alone (no encoding) for the default 400 videos: each type's answers within a few."""
    counts: dict[str, Counter[str]] = defaultdict(Counter)
    for i in range(400):
        for qtype, question, answer in scenes.plan_scene(0, i).questions:
            counts[qtype][answer] += 1
            if qtype == "order":  # the answer must not always be the first-named shape
                counts["order named first"][str(_named(question)[0] == answer)] += 1
    for qtype, c in counts.items():
        assert set(c) == OPTIONS.get(qtype, {"True", "False"}), qtype
        assert max(c.values()) - min(c.values()) <= 3, (qtype, c)


def test_deterministic_bytes_whatever_the_workers(
    world: tuple[Path, writer.ToyWorldSummary], tmp_path: Path
) -> None:
    out, _ = world  # one worker per CPU
    writer.generate(tmp_path / "again", videos=VIDEOS, seed=0, workers=1)
    writer.generate(tmp_path / "three", videos=VIDEOS, seed=0, workers=3)
    writer.generate(tmp_path / "other", videos=VIDEOS, seed=1, workers=3)
    again, other = _sha256s(tmp_path / "again"), _sha256s(tmp_path / "other")
    assert again == _sha256s(out) == _sha256s(tmp_path / "three")
    assert other.keys() == again.keys()
    assert all(other[k] != again[k] for k in ("train.json", "heldout.json", "toyworld.json"))
    assert sum(other[k] != again[k] for k in again) >= VIDEOS


@pytest.mark.skipif(shutil.which("taskset") is None, reason="taskset (util-linux) is not installed")
@pytest.mark.parametrize("workers", [1, 3])
def test_deterministic_bytes_on_one_core(
    world: tuple[Path, writer.ToyWorldSummary], tmp_path: Path, workers: int
) -> None:
    """Pinned to one core (another core count, and every worker sharing it): the same bytes."""
    lines = ["import json, sys", "from panda_edge.toyworld import writer"]
    code = "\n".join([*lines, "writer.generate(**json.loads(sys.argv[1]))"])
    args = {"out_dir": str(tmp_path / "one"), "videos": VIDEOS, "seed": 0, "workers": workers}
    src = str(Path(writer.__file__).parents[2])  # the panda_edge under test, not another install
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    cpu = sorted(os.sched_getaffinity(0))[0]
    done = subprocess.run(
        ["taskset", "-c", str(cpu), sys.executable, "-c", code, json.dumps(args)],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert _sha256s(tmp_path / "one") == _sha256s(world[0])


def test_encoding_one_video_again_gives_the_same_bytes(tmp_path: Path) -> None:
    """x264's SIMD read the uninitialized bytes right of the picture: on AVX-512 CPUs the same frames
    gave other bytes from one encode to the next (videos 4 and 14 among the first 24, 112 and 84 wide)."""
    for index in (4, 14):
        frames = list(render(scenes.plan_scene(0, index)))
        digests = set()
        for k in range(6):
            write_video(tmp_path / f"{index}_{k}.mp4", frames, fps=scenes.FPS)
            digests.add(hashlib.sha256((tmp_path / f"{index}_{k}.mp4").read_bytes()).hexdigest())
        assert len(digests) == 1, index


def test_x264_runs_its_settings(world: tuple[Path, writer.ToyWorldSummary]) -> None:
    """The encoder settings the determinism rests on were applied: x264 writes them into the stream."""
    data = (world[0] / "videos" / f"{scenes.plan_scene(0, 0).video_id}.mp4").read_bytes()
    settings = data[data.index(b"options: ") :].split(b"\x00", 1)[0].decode().split()
    assert {"threads=1", "lookahead_threads=1", "sliced_threads=0"} <= set(settings)


def test_plan_is_independent_of_order() -> None:
    forward = [scenes.plan_scene(3, i) for i in range(8)]
    assert [scenes.plan_scene(3, i) for i in reversed(range(8))][::-1] == forward


def test_videos_decode_to_16_frames_of_the_planned_size(world: tuple[Path, writer.ToyWorldSummary]) -> None:
    out, _ = world
    sizes = set()
    for i in range(VIDEOS):
        scene = scenes.plan_scene(0, i)
        frames = _frames(out, f"{scene.video_id}.mp4")
        assert len(frames) == scenes.FRAMES
        assert {f.shape for f in frames} == {(scene.height, scene.width, 3)}
        sizes.add((scene.width, scene.height))
    assert len(sizes) >= 3


def test_motion_labels_match_pixels(world: tuple[Path, writer.ToyWorldSummary], entries: list[Entry]) -> None:
    balanced = sum(e["type"] == "motion" and "_drill" not in e["id"] for e in entries)
    assert balanced == VIDEOS // 4
    assert check_motion(world[0], entries) > 2 * balanced


def test_appear_labels_match_pixels(world: tuple[Path, writer.ToyWorldSummary], entries: list[Entry]) -> None:
    assert check_appear(world[0], entries) == VIDEOS // 2


def test_count_labels_match_pixels(world: tuple[Path, writer.ToyWorldSummary], entries: list[Entry]) -> None:
    assert check_count(world[0], entries) > 0


def test_color_and_shape_labels_match_pixels(
    world: tuple[Path, writer.ToyWorldSummary], entries: list[Entry]
) -> None:
    assert check_color_shape(world[0], entries) > 0


def test_order_labels_match_pixels(world: tuple[Path, writer.ToyWorldSummary], entries: list[Entry]) -> None:
    assert check_order(world[0], entries, seed=0) == VIDEOS // 4


def test_progress_and_validation(tmp_path: Path) -> None:
    seen: list[int] = []
    writer.generate(tmp_path, videos=3, seed=5, heldout_fraction=0.0, progress=seen.append)
    assert seen == [1, 2, 3]
    assert _load(tmp_path, "heldout.json") == []
    for bad in ({"videos": 0}, {"heldout_fraction": 1.5}, {"seed": -1}, {"workers": 0}):
        with pytest.raises(ValueError):
            writer.generate(tmp_path, **bad)


def test_corpus_text(entries: list[Entry]) -> None:
    text = questions.corpus_text(entries[:3])
    assert text == [s for e in entries[:3] for s in (e["question"], e["answer"])]
    assert not any("<video>" in s for s in questions.corpus_text(entries))


def test_captions_describe_every_training_video(
    world: tuple[Path, writer.ToyWorldSummary], entries: list[Entry]
) -> None:
    """captions.json: one per training video, naming every object; each question's answer is in it."""
    out, _ = world
    captions = json.loads((out / "captions.json").read_text())
    train_videos = {e["video"] for e in json.loads((out / "train.json").read_text())}
    assert {c["video"] for c in captions} == train_videos
    by_video = {c["video"]: c["answer"] for c in captions}
    for e in entries:
        if e["video"] not in by_video:
            continue
        text = by_video[e["video"]]
        if e["type"] == "motion":
            assert f"moves {e['answer']}" in text
        elif e["type"] in ("color", "shape", "order"):
            assert e["answer"] in text
        elif e["type"] == "appear":
            assert ("appears" if e["answer"] == "appear" else "disappears") in text
    assert all(c["conversations"][0]["value"] == "<video>\nDescribe the video." for c in captions)
