"""The toy-world teacher reads each shape's facts from decoded frames alone, and `panda train` takes it."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from panda_edge.cli.main import app
from panda_edge.config import preset
from panda_edge.toyworld import scenes, writer
from panda_edge.train.toy_teacher import FEATURES, MOTIONS, ToyWorldTeacher
from panda_edge.video import load_video

VIDEOS = 16


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("toy")
    writer.generate(out, videos=VIDEOS, seed=4)
    return out


def _facts(teacher: ToyWorldTeacher, frames: torch.Tensor, color: str) -> dict[str, float]:
    """The features the teacher gives the patch this colour covers most, divided by its scales."""
    maps = teacher(frames[:, :3]) / teacher.scales.view(1, -1, 1, 1)
    row = maps[:, 1 + list(scenes.COLORS).index(color)]  # coverage of this colour per patch
    t, rest = divmod(int(row.argmax()), row.shape[1] * row.shape[2])
    y, x = divmod(rest, row.shape[2])
    cell = maps[t, :, y, x] / row[t, y, x]
    return dict(zip(FEATURES, cell.tolist(), strict=True))


def test_teacher_reads_form_motion_and_events_from_pixels(world: Path) -> None:
    vision = preset("tiny").vision
    teacher = ToyWorldTeacher(vision.patch)
    checked = {"form": 0, "motion": 0, "event": 0}
    for i in range(VIDEOS):
        scene = scenes.plan_scene(4, i)
        frames = torch.from_numpy(load_video(world / "videos" / f"{scene.video_id}.mp4", vision))
        for obj in scene.objects:
            facts = _facts(teacher, frames, obj.color)
            assert facts[obj.color] == pytest.approx(1.0), (i, obj)
            assert max(scenes.SHAPES, key=facts.__getitem__) == obj.shape, (i, obj)
            checked["form"] += 1
            if obj.first == 0 and obj.last == scenes.FRAMES - 1:  # seen the whole way
                expected = scenes.direction(obj) or "still"
                travel = abs(obj.end[0] - obj.start[0]) + abs(obj.end[1] - obj.start[1])
                if expected == "still" or travel > 30:
                    assert max(MOTIONS, key=facts.__getitem__) == expected, (i, obj)
                    checked["motion"] += 1
            assert facts["appears"] == float(obj.first > 0), (i, obj)
            assert facts["disappears"] == float(obj.last < scenes.FRAMES - 1), (i, obj)
            checked["event"] += obj.first > 0 or obj.last < scenes.FRAMES - 1
    assert (
        checked["form"] >= 2 * VIDEOS and checked["motion"] >= VIDEOS // 2 and checked["event"] >= VIDEOS // 2
    )


def test_unknown_teacher_exits_2(world: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(
        app, ["train", "--data", str(world), "--out", str(tmp_path / "ck"), "--teacher", "clip"]
    )
    assert result.exit_code == 2, result.output
    assert "toyworld" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "ck").exists()
