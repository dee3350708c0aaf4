"""`panda calibrate`: INT8 for a bundle's vision graph, calibrated here on CPU, as Q/DQ in the ONNX."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table

from panda_edge.bundle import Int8Report
from panda_edge.calibration.ranges import DEFAULT_METHOD
from panda_edge.cli._common import emit_result, handle_errors, json_to_stdout, out, step_printer

SamplesOption = Annotated[int, typer.Option(min=1, help="Calibration videos, spread over the ones given.")]
MethodOption = Annotated[str, typer.Option(help="Activation ranges: entropy, minmax or percentile.")]
TargetOption = Annotated[
    float,
    typer.Option(help="Mean per-token cosine both INT8 graphs must reach; groups go float until they do."),
]
HoldoutOption = Annotated[
    int, typer.Option(min=0, help="Other videos of the set to check both graphs on afterwards (0: none).")
]


@handle_errors
def calibrate(
    bundle: Annotated[Path, typer.Option(help="Bundle directory written by panda export --target onnx.")],
    videos: Annotated[
        Path | None, typer.Option(help="Directory of calibration videos (with --qa: where its videos are).")
    ] = None,
    qa: Annotated[
        Path | None,
        typer.Option(help="QA JSON whose videos to calibrate on (e.g. a toy world's train.json)."),
    ] = None,
    samples: SamplesOption = 8,
    method: MethodOption = DEFAULT_METHOD,
    target_cosine: TargetOption = 0.99,
    holdout: HoldoutOption = 4,
    json_out: Annotated[
        Path | None,
        typer.Option("--json", help="Write the report (the manifest's vision_int8) as JSON ('-': stdout)."),
    ] = None,
) -> None:
    """Write BUNDLE/stab.int8.onnx (TensorRT Q/DQ: int8 symmetric, per-channel weights, float bias) and
    BUNDLE/stab.int8.cpu.onnx (ONNX Runtime U8S8) from one calibration.

    The videos go through the inference pre-processing; the tensors are kept in
    BUNDLE/calibration.npz, which a run without --videos and --qa uses again. Each layer group's effect
    on the visual tokens is measured, and the most harmful groups stay float until both graphs reach
    --target-cosine (mean per-token cosine against the fp32 graph). Exit 1 when the TensorRT graph
    fails its profile's checks (nothing written), 2 for bad input.
    """
    from panda_edge.calibration.calibrate import calibrate_bundle

    quiet = json_to_stdout(json_out)
    report = calibrate_bundle(
        bundle, videos, qa, samples, method, target_cosine, holdout, on_step=step_printer(quiet)
    )
    if emit_result(report, json_out):
        return
    print_report(bundle, Int8Report.from_dict(report, bundle))


def print_report(bundle: Path, report: Int8Report) -> None:
    """The groups table (what stayed float and why) and the cosines, on stdout."""
    table = Table(title=f"INT8 layer groups ({report.method}, {report.samples} calibration videos)")
    for column in ("group", "nodes", "alone in INT8: cosine mean", "precision", "why"):
        table.add_column(column, overflow="fold")
    for group in report.groups.values():
        table.add_row(
            group.name,
            str(group.nodes),
            f"{group.alone_cosine_mean:.6f}",
            group.precision,
            group.reason,
            style="bold yellow" if group.precision == "float" else None,
        )
    out.print(table)
    t, c = report.tensorrt, report.cpu
    lines = [
        f"TensorRT form ({report.file}): cosine mean {t.cosine_mean:.5f}, min {t.cosine_min:.5f}",
        f"CPU form ({report.cpu_file}): cosine mean {c.cosine_mean:.5f}, min {c.cosine_min:.5f}",
    ]
    if report.heldout is not None:
        t, c = report.heldout
        lines.append(
            f"held out ({report.heldout_videos} videos): TensorRT form {t.cosine_mean:.5f} "
            f"(min {t.cosine_min:.5f}), CPU form {c.cosine_mean:.5f} (min {c.cosine_min:.5f})"
        )
    floats = ", ".join(report.float_groups) or "none"
    lines.append(
        f"wrote {bundle}: {report.file}, {report.cpu_file}, {report.calibration}; "
        f"{report.quantized_nodes} of {report.quantizable_nodes} nodes INT8, float groups: {floats} "
        f"(target {report.target_cosine}, against the fp32 graph)"
    )
    for line in lines:
        out.print(line)
