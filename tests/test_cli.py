"""The `panda` command line, as a user runs it: JSON output, exit codes, one-line errors."""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

from typer.testing import CliRunner

from panda_edge.cli.main import app
from panda_edge.config import PRESETS

runner = CliRunner()


def _json(args: list[str]) -> dict:
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def test_info_full_preset() -> None:
    report = _json(["info", "--preset", "full", "--json", "-"])
    params = report["parameters"]
    assert round(params["vision"] / 1e6, 1) == 46.5
    assert round(params["vision_without_lmhra2"] / 1e6, 1) == 45.1
    assert round(params["stab"] / 1e6, 1) == 25.5 and round(params["projector"] / 1e6, 1) == 21.0
    assert report["visual_tokens"]["per_frame"] == 273
    assert report["visual_tokens"]["per_video"] == 2184


def test_info_non_square_and_short() -> None:
    report = _json(["info", "--preset", "full", "--size", "1920x1080", "--frames", "5", "--json", "-"])
    assert report["visual_tokens"]["per_frame"] == 154
    assert report["visual_tokens"]["per_video"] == 5 * 154 + 3 * 73
    assert (
        _json(["info", "--preset", "full", "--size", "1080x1920", "--json", "-"])["visual_tokens"][
            "per_frame"
        ]
        == 161
    )


def test_info_checkpoint(tiny_checkpoint: Path) -> None:
    report = _json(["info", str(tiny_checkpoint), "--json", "-"])
    assert report["config"]["llm"]["hidden_size"] == PRESETS["tiny"].llm.hidden_size
    assert report["visual_tokens"]["per_frame"] == 21


def test_quiet_verbose_and_the_log_left_as_found() -> None:
    logger = logging.getLogger("panda_edge")
    before = (list(logger.handlers), logger.level)
    result = runner.invoke(app, ["-q", "info", "--preset", "tiny"])
    assert result.exit_code == 0 and "visual tokens" in result.stdout and result.stderr == ""
    assert runner.invoke(app, ["-v", "info", "--preset", "tiny"]).exit_code == 0
    assert (list(logger.handlers), logger.level) == before  # the command put the log back
    result = runner.invoke(app, ["-v", "-q", "info", "--preset", "tiny"])
    assert result.exit_code == 2 and "do not go together" in result.stderr


def test_info_usage_errors_exit_2(tmp_path: Path) -> None:
    assert runner.invoke(app, ["info"]).exit_code == 2
    assert runner.invoke(app, ["info", "--preset", "full", "--size", "wide"]).exit_code == 2
    result = runner.invoke(app, ["info", "--preset", "huge"])
    assert result.exit_code == 2 and "unknown preset 'huge'" in result.stderr
    result = runner.invoke(app, ["info", str(tmp_path / "missing")])
    assert result.exit_code == 2 and "no such checkpoint directory" in result.stderr


def test_generate_json(tiny_checkpoint: Path, make_video) -> None:
    video = make_video()
    report = _json(
        [
            "generate",
            str(video),
            "What color is the square?",
            "--checkpoint",
            str(tiny_checkpoint),
            "--max-new-tokens",
            "6",
            "--json",
            "-",
        ]
    )
    assert report["question"] == "What color is the square?"
    assert isinstance(report["answer"], str)


def test_generate_bad_video_is_one_line(tiny_checkpoint: Path, tmp_path: Path) -> None:
    bad = tmp_path / "notes.mp4"
    bad.write_text("this is not a video\n")
    result = runner.invoke(app, ["generate", str(bad), "What?", "--checkpoint", str(tiny_checkpoint)])
    assert result.exit_code == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "notes.mp4" in lines[0] and "Traceback" not in result.output


def test_help_does_not_import_torch() -> None:
    code = (
        "import sys\nfrom typer.testing import CliRunner\nfrom panda_edge.cli.main import app\n"
        "r = CliRunner().invoke(app, ['--help'])\nassert r.exit_code == 0, r.output\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_model_text_is_printed_as_it_is(capsys) -> None:
    """An answer is not Rich markup: "[red]" used to vanish from `panda chat` and `panda run`."""
    from panda_edge.cli._common import print_model_text

    for piece in ("[red]", "x[/] [bold]y", " :smile: ", "0.5 [1/2]"):
        print_model_text(piece)
    assert capsys.readouterr().out == "[red]x[/] [bold]y :smile: 0.5 [1/2]"
