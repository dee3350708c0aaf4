"""lmms-eval, the real harness, against `panda serve`: its `openai` model asks the toy world's held-out
video questions (a local task, tests/lmms_eval_task) as frames (its default: `max_frames_num` PNG
frames after the text) and as a `video_url` (`pass_video_url=True`, with vLLM's media_io_kwargs), and
both score within a point of each other.

lmms-eval lives in its own virtual environment (tests/lmms_eval_task/requirements.txt says why);
.ci/run makes it at .venv-lmms-eval, or PANDA_LMMS_EVAL_PYTHON names its interpreter."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from panda_edge.optional import has_llama_cpp

pytest.importorskip("starlette", reason="panda serve needs the serve extra")
pytestmark = pytest.mark.skipif(
    not has_llama_cpp(), reason="llama-cpp-python is not installed (pip install 'panda-edge[llama]')"
)
ROOT = Path(__file__).resolve().parents[1]
TASK = ROOT / "tests" / "lmms_eval_task"
KEY = "sk-panda-test"
LMMS_EVAL = Path(os.environ.get("PANDA_LMMS_EVAL_PYTHON", ROOT / ".venv-lmms-eval" / "bin" / "python"))


def lmms_eval_score(url: str, tmp: Path, mode: str, model_args: str, *flags: str) -> tuple[float, int]:
    """(exact-match score, questions) of `python -m lmms_eval eval --model openai` on the task, run in
    `tmp` (where its questions are), its output in `tmp`/`mode`."""
    out = tmp / mode
    env = {
        **os.environ,
        "OPENAI_API_BASE": url + "/v1",
        "OPENAI_API_KEY": KEY,
        "HF_DATASETS_CACHE": str(tmp / "hf-datasets"),
        "HF_HUB_OFFLINE": "1",
        "HF_DATASETS_OFFLINE": "1",
    }
    args = f"model_version=tiny,max_frames_num=8,num_concurrent=2,max_retries=1,timeout=120{model_args}"
    command = [str(LMMS_EVAL), "-m", "lmms_eval", "eval", "--model", "openai", "--model_args", args]
    command += ["--tasks", "panda_toy", "--include_path", str(TASK), "--batch_size", "1"]
    command += ["--output_path", str(out), "--log_samples", *flags]
    done = subprocess.run(command, env=env, cwd=tmp, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    (results,) = out.glob("*/*_results.json")
    (samples,) = out.glob("*/*_samples_panda_toy.jsonl")
    answers = [json.loads(line)["filtered_resps"] for line in samples.read_text().splitlines()]
    assert not any("LMMS_EVAL_REQUEST_FAILED" in str(a) for a in answers), answers  # every request answered
    return json.loads(results.read_text())["results"]["panda_toy"]["exact_match,none"], len(answers)


@pytest.mark.skipif(not LMMS_EVAL.exists(), reason=f"lmms-eval is not installed at {LMMS_EVAL} (.ci/run)")
def test_lmms_eval_scores_frames_like_video_urls(tiny_bundle: Path, unseen_toy: Path, tmp_path: Path) -> None:
    from panda_edge.runtime.options import RuntimeOptions
    from panda_edge.serving.app import ServeOptions, create_app
    from panda_edge.serving.server import running_server

    questions = json.loads((unseen_toy / "heldout.json").read_text())
    rows = [
        {
            "id": q["id"],
            "question": q["question"],
            "answer": q["answer"],
            "video_path": str(unseen_toy / "videos" / q["video"]),
        }
        for q in questions
    ]
    (tmp_path / "panda_toy.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))

    runtime = RuntimeOptions().open(tiny_bundle)
    # frames: no --media-dir, so a file:// video_url would be refused and only images can be answered;
    # lmms-eval's frames mode is its simple model (the chat model's needs torchvision, see requirements)
    with running_server(create_app(runtime, ServeOptions(model_name="tiny", api_key=KEY))) as url:
        frames, n = lmms_eval_score(url, tmp_path, "frames", "", "--force_simple")
    runtime = RuntimeOptions().open(tiny_bundle)
    options = ServeOptions(model_name="tiny", api_key=KEY, media_dir=unseen_toy)
    with running_server(create_app(runtime, options)) as url:
        video_url, m = lmms_eval_score(url, tmp_path, "video_url", ",pass_video_url=True")
    print(
        f"lmms-eval on {n} held-out toy questions: frames {frames:.3f}, video_url {video_url:.3f}",
        file=sys.stderr,
    )
    assert n == m == len(questions) >= 10
    assert abs(frames - video_url) <= 0.01
    assert video_url >= 0.5  # the tiny model answers the toy world; not a run of empty answers
