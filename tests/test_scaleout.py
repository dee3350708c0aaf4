"""Whole QA sets by work items: in one process, on a local Ray cluster (two workers, one of them
killed mid-run), resumed from a journal, in the MSVD-QA form; the same answers every way."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
from dataclasses import replace
from pathlib import Path

import pytest
from typer.testing import CliRunner

from panda_edge.cli.main import app
from panda_edge.optional import has_llama_cpp
from panda_edge.parity.qa_jobs import AnswererSpec, Journal, answer_questions, local_runner, qa_report
from panda_edge.parity.task import read_questions

pytestmark = pytest.mark.skipif(
    not has_llama_cpp(), reason="llama-cpp-python is not installed (pip install 'panda-edge[llama]')"
)
needs_ray = pytest.mark.skipif(importlib.util.find_spec("ray") is None, reason="--ray needs panda-edge[ray]")
runner = CliRunner()


@pytest.fixture(scope="module")
def cluster():
    """One local Ray cluster for this module's Ray tests (two CPUs: two workers); `--ray local` joins
    the one this process already runs."""
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def spec(bundle: Path | None = None) -> AnswererSpec:
    return AnswererSpec("tiny", None, None if bundle is None else str(bundle))


@pytest.fixture(scope="module")
def single(tiny_bundle: Path, unseen_toy: Path) -> dict:
    """The single-process run: the reference and the runtime on every held-out question."""
    questions = read_questions(unseen_toy / "heldout.json")
    return qa_report(
        questions,
        answer_questions(questions, unseen_toy / "videos", spec(tiny_bundle)),
        ("reference", "runtime"),
    )


def answers(report: dict) -> dict:
    return {r["id"]: (r["reference"], r.get("runtime"), r["error"]) for r in report["predictions"]}


def test_eval_bundle_takes_panda_runs_runtime_options(
    tiny_bundle: Path, unseen_toy: Path, single: dict
) -> None:
    """`eval --bundle` opens the runtime with run's options (one RuntimeOptions), spelled as run spells
    them; the old `--vision-precision` still works, with a warning."""
    args = ["eval", "--qa", str(unseen_toy / "heldout.json"), "--videos", str(unseen_toy / "videos")]
    args += ["--bundle", str(tiny_bundle), "--limit", "4", "--json", "-"]
    result = runner.invoke(app, [*args, "--precision", "fp32", "--kv-type", "f16", "--threads", "1"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    expected = answers(single)
    assert answers(report) == {k: expected[k] for k in answers(report)} and len(report["predictions"]) == 4
    old = runner.invoke(app, [*args, "--vision-precision", "fp32"])
    assert old.exit_code == 0 and "--vision-precision is deprecated: use --precision" in old.stderr
    assert answers(json.loads(old.stdout)) == answers(report)


@needs_ray
def test_eval_on_ray_gives_the_single_process_answers(
    tiny_bundle: Path, unseen_toy: Path, single: dict, tmp_path: Path
) -> None:
    args = [
        "eval",
        "--qa",
        str(unseen_toy / "heldout.json"),
        "--videos",
        str(unseen_toy / "videos"),
        "--bundle",
        str(tiny_bundle),
    ]
    result = runner.invoke(
        app, [*args, "--ray", "local", "--workers", "2", "--json", str(tmp_path / "ray.json")]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "ray.json").read_text())
    assert answers(report) == answers(single)
    assert report["accuracy"] == single["reference"]["accuracy"]
    assert report["runtime"] == single["runtime"] and report["agreement"] == single["agreement"]


@needs_ray
def test_a_killed_worker_loses_nothing_and_counts_nothing_twice(
    tiny_bundle: Path, unseen_toy: Path, single: dict
) -> None:
    import ray

    from panda_edge.scaleout.ray_qa import ray_runner

    questions = read_questions(unseen_toy / "heldout.json")
    pids: list[int] = []
    killed: list[int] = []

    def started(actors) -> None:
        pids.extend(ray.get([a.pid.remote() for a in actors]))

    def kill_once(done: int) -> None:
        if done and not killed:  # after the first item: the other worker is mid-item or about to be
            os.kill(pids[-1], signal.SIGKILL)
            killed.append(pids[-1])

    run = answer_questions(
        questions,
        unseen_toy / "videos",
        spec(tiny_bundle),
        runner=ray_runner("local", 2, on_workers=started),
        on_answers=kill_once,
    )
    assert killed
    report = qa_report(questions, run, ("reference", "runtime"))
    assert answers(report) == answers(single)
    assert len(run.records) == len(questions)


def test_resume_finishes_an_interrupted_run_without_redoing_its_items(
    unseen_toy: Path, single: dict, tmp_path: Path
) -> None:
    questions = read_questions(unseen_toy / "heldout.json")
    journal = Journal(tmp_path / "journal.jsonl")

    class Interrupted(Exception):
        pass

    def stop_after_three_items(done: int) -> None:
        if done >= 3 and len(journal.records()) >= 3:
            raise Interrupted

    with pytest.raises(Interrupted):
        answer_questions(questions, unseen_toy / "videos", spec(), journal, on_answers=stop_after_three_items)
    first = journal.records()
    answered: list[str] = []

    def counting(answerers_spec, items, videos_dir):
        answered.extend(item.video for item in items)
        return local_runner(answerers_spec, items, videos_dir)

    run = answer_questions(questions, unseen_toy / "videos", spec(), journal, runner=counting)
    assert run.resumed == len(first) > 0
    assert not {r["video"] for r in first.values()} & set(answered)  # finished videos were not redone
    assert len(run.records) == len(questions)
    report = qa_report(questions, run, ("reference",))
    assert {i: a[0] for i, a in answers(report).items()} == {i: a[0] for i, a in answers(single).items()}
    lines = (tmp_path / "journal.jsonl").read_text().splitlines()
    assert len(lines) == len(questions)  # each answer recorded once


def test_msvd_qa_form_is_read_by_video_id_and_scored(unseen_toy: Path, single: dict, tmp_path: Path) -> None:
    entries = json.loads((unseen_toy / "heldout.json").read_text())
    msvd = [
        {
            "video_id": Path(e["video"]).stem,
            "question": e["question"],
            "answer": e["answer"],
            "question_id": i,
        }
        for i, e in enumerate(entries)
    ]
    (tmp_path / "msvd.json").write_text(json.dumps(msvd))
    args = [
        "eval",
        "--qa",
        str(tmp_path / "msvd.json"),
        "--videos",
        str(unseen_toy / "videos"),
        "--json",
        "-",
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["questions"] == len(entries)
    assert report["accuracy"] == single["reference"]["accuracy"]
    assert [r["video"] for r in report["predictions"]] == [e["video"] for e in entries]


def test_a_broken_video_is_an_error_on_its_questions_not_the_end(unseen_toy: Path, tmp_path: Path) -> None:
    entries = json.loads((unseen_toy / "heldout.json").read_text())[:3]
    (tmp_path / "videos").mkdir()
    for e in entries:
        (tmp_path / "videos" / e["video"]).write_bytes((unseen_toy / "videos" / e["video"]).read_bytes())
    (tmp_path / "videos" / "broken.mp4").write_text("not a video")
    entries += [
        {**entries[0], "id": "broken-1", "video": "broken.mp4"},
        {**entries[0], "id": "gone", "video": "x.mp4"},
    ]
    (tmp_path / "qa.json").write_text(json.dumps(entries))
    args = ["eval", "--qa", str(tmp_path / "qa.json"), "--videos", str(tmp_path / "videos"), "--json", "-"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["errors"] == 2 and report["questions"] == 5
    errors = {r["id"]: r["error"] for r in report["predictions"] if r["error"]}
    assert "not a readable video" in errors["broken-1"] and "no such video file" in errors["gone"]


@needs_ray
def test_parity_task_on_ray_gives_the_single_process_report(
    cluster, tiny_bundle: Path, unseen_toy: Path
) -> None:
    from panda_edge.parity.report import ParityOptions, run_parity
    from panda_edge.scaleout.ray_qa import ray_runner

    options = ParityOptions(qa=unseen_toy / "heldout.json", levels=["task"])
    here = run_parity("tiny", tiny_bundle, options).report["task"]
    there = run_parity("tiny", tiny_bundle, replace(options, runner=ray_runner("local", 2))).report["task"]
    assert there == here
    assert len(here["predictions"]) == len(read_questions(unseen_toy / "heldout.json"))
