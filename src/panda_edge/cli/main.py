"""The `panda` command line."""

from __future__ import annotations

import typer

from panda_edge import __version__
from panda_edge.cli._common import configure_output
from panda_edge.cli.bench import app as bench_app
from panda_edge.cli.build_engine import build_engine
from panda_edge.cli.calibrate import calibrate
from panda_edge.cli.demo import demo
from panda_edge.cli.eval import eval as eval_command
from panda_edge.cli.export import export
from panda_edge.cli.finetune import finetune
from panda_edge.cli.generate import generate
from panda_edge.cli.info import info
from panda_edge.cli.parity import parity
from panda_edge.cli.plan import plan
from panda_edge.cli.run import chat, run
from panda_edge.cli.serve import serve
from panda_edge.cli.toyworld import toyworld
from panda_edge.cli.train import train
from panda_edge.cli.watch import watch

app = typer.Typer(
    name="panda",
    help="Video-Panda on edge devices: reference model, export, parity checks.\n\n"
    "Exit status: 0 ok, 1 a requested check failed, 2 bad input (file, bundle, argument).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)
app.command(rich_help_panel="Start here")(demo)
app.command(rich_help_panel="Model")(info)
app.command(rich_help_panel="Model")(generate)
app.command(rich_help_panel="Training")(toyworld)
app.command(rich_help_panel="Training")(train)
app.command(rich_help_panel="Training")(finetune)
app.command(name="eval", rich_help_panel="Training")(eval_command)
app.command(rich_help_panel="Export")(export)
app.command(name="build-engine", rich_help_panel="Export")(build_engine)
app.command(rich_help_panel="Export")(calibrate)
app.command(rich_help_panel="Run")(run)
app.command(rich_help_panel="Run")(chat)
app.command(rich_help_panel="Run")(serve)
app.command(rich_help_panel="Run")(watch)
app.command(rich_help_panel="Checks")(parity)
app.add_typer(bench_app, name="bench", rich_help_panel="Checks")
app.command(rich_help_panel="Deploy")(plan)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"panda-edge {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version."
    ),
    verbose: bool = typer.Option(
        False,
        "-v",
        "--verbose",
        help="Debug log on stderr, with llama.cpp's, ONNX Runtime's and TensorRT's own logs.",
    ),
    quiet: bool = typer.Option(
        False, "-q", "--quiet", help="Results only: no progress or notes; errors still on stderr."
    ),
) -> None:
    """Video-Panda on edge devices."""
    ctx.call_on_close(configure_output(verbose, quiet))


def main() -> None:
    app()


if __name__ == "__main__":
    main()
