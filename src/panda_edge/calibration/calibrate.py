"""`panda calibrate`: one calibration of a bundle's fp32 graph -> both INT8 graphs, in the bundle.

`stab.int8.onnx` is the TensorRT form (symmetric int8 Q/DQ, checked against the bundle's TensorRT
profile), `stab.int8.cpu.onnx` the ONNX Runtime CPU form (U8S8), both from the same activation
ranges and the same choice of float groups; `calibration.npz` holds the tensors they came from.
As with every export, the new files are written under temporary names and the manifest, with the
`vision_int8` entry, replaces the old one last: the bundle works as it was until then.
No torch: the fp32 graph is the reference (see `search.py`).
"""

from __future__ import annotations

import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from panda_edge.backends import trt_target
from panda_edge.bundle import (
    CALIBRATION_FILE,
    STAB_INT8_CPU_FILE,
    STAB_INT8_FILE,
    VISION,
    VISION_INT8,
    Manifest,
    StagedFiles,
    tool_versions,
)
from panda_edge.calibration.data import (
    load_calibration,
    save_calibration,
    split_videos,
    spread,
    videos_in,
    videos_of_qa,
)
from panda_edge.calibration.qdq import CPU, TENSORRT, QdqWriter
from panda_edge.calibration.ranges import DEFAULT_METHOD, check_method, collect_ranges
from panda_edge.calibration.search import MixedPrecision, TokenScorer, choose_precision
from panda_edge.errors import BundleError, CheckFailed, PandaError
from panda_edge.export.stab_onnx.check import check_onnx, qdq_problems
from panda_edge.export.trt.engines import write_build_script
from panda_edge.export.trt.script import SCRIPT_FILE
from panda_edge.parity.compare import LEVELS, OutputParity
from panda_edge.video import load_videos

DEFAULT_SAMPLES = 8
DEFAULT_HOLDOUT = 4
DEFAULT_TARGET = LEVELS["stab_int8"].cosine_mean

FORMS = {
    "tensorrt": {
        "file": STAB_INT8_FILE,
        "activations": "int8, symmetric per tensor (zero point 0)",
        "weights": "int8, symmetric per output channel",
        "quantized": "inputs of Conv / MatMul / Gemm; outputs, adds, LayerNorms and biases in float",
    },
    "cpu": {
        "file": STAB_INT8_CPU_FILE,
        "activations": "uint8, asymmetric per tensor",
        "weights": "int8 in 7 bits (-63..63), symmetric per output channel: no 16-bit saturation "
        "on x86 CPUs without VNNI",
        "quantized": "inputs and outputs of Conv / MatMul / Gemm (ONNX Runtime fuses them into "
        "QLinearConv / QLinearMatMul / QGemm); biases in float",
    },
}


@dataclass
class Int8Graphs:
    """Both INT8 forms of one graph from one calibration, and how their precision was chosen."""

    tensorrt: onnx.ModelProto
    cpu: onnx.ModelProto
    precision: MixedPrecision
    quantizable_nodes: int
    method: str


def calibrate_graph(
    onnx_path: str | Path,
    videos: np.ndarray,
    method: str = DEFAULT_METHOD,
    target_cosine: float = DEFAULT_TARGET,
    on_step: Callable[[str], None] | None = None,
) -> Int8Graphs:
    """Collect ranges on `videos` (N, frames, 4, S, S), choose the float groups, write both forms."""
    step = on_step or (lambda message: None)
    step(f"collecting activation ranges ({method}) on {len(videos)} calibration video(s)")
    ranges = collect_ranges(onnx_path, videos, method)
    model = onnx.load(str(onnx_path))
    writer = QdqWriter(model, ranges)
    step("running the fp32 graph on the calibration videos (the reference)")
    scorer = TokenScorer(model, videos, target_cosine)
    precision = choose_precision(writer, scorer, target_cosine, on_step)
    nodes = precision.quantized_nodes
    return Int8Graphs(
        writer.write(nodes, TENSORRT), writer.write(nodes, CPU), precision, len(writer.nodes), method
    )


def score_forms(
    fp32: onnx.ModelProto | Path, graphs: Int8Graphs, videos: np.ndarray, target: float
) -> tuple[OutputParity, OutputParity]:
    """(TensorRT form, CPU form) against the fp32 graph on other videos (the held-out check)."""
    scorer = TokenScorer(fp32, videos, target)
    return scorer.score(graphs.tensorrt, True, "tensorrt"), scorer.score(graphs.cpu, False, "cpu")


def parity_entry(result: OutputParity) -> dict[str, Any]:
    return {
        "cosine_mean": result.cosine_mean,
        "cosine_min": result.cosine_min,
        "cosine_histogram": result.cosine_histogram,
        "tokens": result.tokens,
        "passed": result.passed,
    }


def calibrate_bundle(
    bundle: str | Path,
    videos: str | Path | None = None,
    qa: str | Path | None = None,
    samples: int = DEFAULT_SAMPLES,
    method: str = DEFAULT_METHOD,
    target_cosine: float = DEFAULT_TARGET,
    holdout: int = DEFAULT_HOLDOUT,
    on_step: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Calibrate `bundle`'s `stab.onnx` and add both INT8 graphs; returns the `vision_int8` entry.

    The data: the videos in directory `videos`, or those a QA file `qa` names (looked up in `videos`
    when given), `samples` of them spread over the list, and up to `holdout` others for a held-out
    check; with neither, the tensors of the bundle's `calibration.npz` again.
    Raises CheckFailed (and changes nothing) when the TensorRT form fails its profile's checks.
    """
    step = on_step or (lambda message: None)
    check_method(method)
    if samples < 1:
        raise PandaError(f"--samples must be at least 1, got {samples}")
    if not 0 < target_cosine <= 1:
        raise PandaError(f"--target-cosine must be in (0, 1], got {target_cosine}")
    bundle = Path(bundle)
    manifest = Manifest.load(bundle)
    if not manifest.has_graph(VISION):
        raise BundleError(f"{bundle}: the bundle has no vision graph; export it with --target onnx first")
    vision = manifest.config.vision
    profile = trt_target(str(manifest.profile))
    frames, names, heldout_frames, heldout_names = _calibration_data(
        bundle, vision, videos, qa, samples, holdout, step
    )
    source = manifest.path(manifest.vision.file)
    graphs = calibrate_graph(source, frames, method, target_cosine, on_step)
    heldout = None
    if len(heldout_frames):
        step(f"checking both forms on {len(heldout_frames)} held-out video(s)")
        tensorrt, cpu = score_forms(source, graphs, heldout_frames, target_cosine)
        heldout = {"videos": heldout_names, "tensorrt": parity_entry(tensorrt), "cpu": parity_entry(cpu)}
    entry = _entry(manifest, profile.profile, graphs, names, target_cosine, heldout)
    with tempfile.TemporaryDirectory(prefix="panda-int8-") as tmp, StagedFiles(bundle) as staged:
        written = _write_checked(graphs, Path(tmp), profile)
        step("writing the INT8 graphs, calibration.npz and the manifest")
        for name, path in written.items():  # a copy: the temporary directory may be on another disk
            shutil.copyfile(path, staged.path(name))
        save_calibration(staged.path(CALIBRATION_FILE), frames, names)
        updates = {VISION_INT8: entry, "tools": {**manifest.tools, **tool_versions()}}
        new_files = [STAB_INT8_FILE, STAB_INT8_CPU_FILE, CALIBRATION_FILE]
        manifest = Manifest.from_dict(staged.commit(*manifest.extended(updates, new_files)), bundle)
    if SCRIPT_FILE in manifest.files:  # exported for TensorRT: build_engine.sh gets the INT8 build too
        write_build_script(manifest)
    return manifest.graph(VISION_INT8).to_dict()


def check_calibration_source(videos: str | Path | None, qa: str | Path | None, method: str) -> None:
    """An export that ends in INT8 needs videos to calibrate on (it has no calibration.npz yet)."""
    check_method(method)
    if videos is None and qa is None:
        raise PandaError("--precision int8 needs calibration videos: --videos DIR or --qa QA.json")
    if qa is not None and not Path(qa).is_file():
        raise PandaError(f"{qa}: no such QA file")
    if qa is None and not Path(videos).is_dir():
        raise PandaError(f"{videos}: no such directory of videos")


def bundle_calibrator(
    videos: str | Path | None, qa: str | Path | None, **options: Any
) -> Callable[[Path, Callable[[str], None] | None], dict[str, Any]]:
    """`calibrate(bundle, on_step)`: `calibrate_bundle` with these arguments, for an export that ends
    in INT8 graphs (`export.target`); the source is checked now, so a missing one fails before the
    export, not after it."""
    check_calibration_source(videos, qa, options.get("method", DEFAULT_METHOD))
    return lambda bundle, on_step: calibrate_bundle(bundle, videos, qa, on_step=on_step, **options)


def _calibration_data(
    bundle: Path,
    vision: Any,
    videos: str | Path | None,
    qa: str | Path | None,
    samples: int,
    holdout: int,
    step: Callable[[str], None],
) -> tuple[np.ndarray, list[str], np.ndarray, list[str]]:
    """(frames, names) to calibrate on and (frames, names) held out."""
    if videos is None and qa is None:
        path = bundle / CALIBRATION_FILE
        if not path.is_file():
            raise PandaError(
                f"{bundle}: no {CALIBRATION_FILE} to reuse; give the calibration videos "
                "(--videos DIR or --qa QA.json)"
            )
        frames, names = load_calibration(path, vision)
        index = spread(range(len(frames)), samples)
        step(f"reusing {len(index)} of the {len(frames)} videos in {CALIBRATION_FILE}")
        return frames[index], [names[i] for i in index], np.zeros((0,)), []
    found = videos_of_qa(qa, videos) if qa is not None else videos_in(videos)
    chosen, held = split_videos(found, samples, holdout)
    step(f"decoding {len(chosen)} calibration + {len(held)} held-out video(s) of {len(found)}")
    frames = load_videos(chosen, vision)
    heldout = load_videos(held, vision) if held else np.zeros((0,))
    return frames, [str(p) for p in chosen], heldout, [str(p) for p in held]


def _write_checked(graphs: Int8Graphs, directory: Path, profile: Any) -> dict[str, Path]:
    """Save both forms in `directory` and check them; raises CheckFailed with every problem found."""
    paths = {STAB_INT8_FILE: directory / STAB_INT8_FILE, STAB_INT8_CPU_FILE: directory / STAB_INT8_CPU_FILE}
    onnx.save(graphs.tensorrt, str(paths[STAB_INT8_FILE]))
    onnx.save(graphs.cpu, str(paths[STAB_INT8_CPU_FILE]))
    problems = [f"{STAB_INT8_FILE}: {p}" for p in check_onnx(paths[STAB_INT8_FILE], profile)]
    try:
        onnx.checker.check_model(str(paths[STAB_INT8_CPU_FILE]))
    except onnx.checker.ValidationError as exc:
        problems.append(f"{STAB_INT8_CPU_FILE}: ONNX checker: {str(exc).strip().splitlines()[0]}")
    problems += [f"{STAB_INT8_CPU_FILE}: {p}" for p in qdq_problems(graphs.cpu, tensorrt=False)]
    if problems:
        raise CheckFailed(
            f"the INT8 graphs fail their checks (TensorRT {profile.tensorrt}): " + "; ".join(problems)
        )
    return paths


def _entry(
    manifest: Manifest,
    profile: str,
    graphs: Int8Graphs,
    videos: Sequence[str],
    target: float,
    heldout: dict[str, Any] | None,
) -> dict[str, Any]:
    precision = graphs.precision
    vision = manifest.vision
    inputs, outputs = manifest.graph_io(VISION)
    return {
        "file": STAB_INT8_FILE,
        "cpu_file": STAB_INT8_CPU_FILE,
        "calibration": CALIBRATION_FILE,
        "source": {"file": vision.file, "sha256": manifest.sha256(vision.file)},
        "inputs": inputs,
        "outputs": outputs,
        "profile": profile,
        "tensorrt": vision.tensorrt,
        "opset": vision.opset,
        "method": graphs.method,
        "samples": len(videos),
        "videos": list(videos),
        "target_cosine": target,
        "reference": "the fp32 graph (stab.onnx) on the calibration videos, tokens the runtime keeps",
        "cosine_mean": precision.tensorrt.cosine_mean,
        "cosine_min": precision.tensorrt.cosine_min,
        "cpu_cosine_mean": precision.cpu.cosine_mean,
        "cpu_cosine_min": precision.cpu.cosine_min,
        "calibration_set": {"tensorrt": parity_entry(precision.tensorrt), "cpu": parity_entry(precision.cpu)},
        "heldout": heldout,
        "float_groups": list(precision.float_groups),
        "quantized_nodes": len(precision.quantized_nodes),
        "quantizable_nodes": graphs.quantizable_nodes,
        **{k: v for k, v in precision.to_dict().items() if k not in ("target_cosine", "float_groups")},
        "forms": FORMS,
        "operators": dict(sorted(Counter(n.op_type for n in graphs.tensorrt.graph.node).items())),
    }
