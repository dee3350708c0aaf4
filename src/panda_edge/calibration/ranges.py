"""Activation ranges of the fp32 graph over the calibration tensors, collected once, on CPU.

ONNX Runtime's calibrators do the collecting (min/max, entropy, or a percentile of histograms);
every Q/DQ form is then written from these ranges (`qdq.py`), so both INT8 graphs of a bundle come
from one calibration. One video is fed at a time, so memory holds one video's activations at most.
"""

from __future__ import annotations

import contextlib
import io
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np

from panda_edge.errors import PandaError
from panda_edge.optional import onnxruntime
from panda_edge.token_layout import FRAMES

METHODS = ("minmax", "entropy", "percentile")
# Entropy (KL-divergence thresholds, TensorRT's classic calibrator) kept the trained tiny model's
# held-out tokens closest: mean cosine 0.99986 (TensorRT form) vs 0.99919 percentile, 0.99780 minmax.
DEFAULT_METHOD = "entropy"
OP_TYPES = ("Conv", "MatMul", "Gemm")


def check_method(method: str) -> str:
    if method not in METHODS:
        raise PandaError(f"unknown calibration method '{method}'; choose one of: {', '.join(METHODS)}")
    return method


class _OneVideo:
    """The CalibrationDataReader protocol (`get_next`) over one video's frames."""

    def __init__(self, frames: np.ndarray) -> None:
        self._feeds: Iterator[dict[str, np.ndarray]] = iter([{FRAMES: frames}])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._feeds, None)


def collect_ranges(
    onnx_path: str | Path,
    videos: np.ndarray,
    method: str = DEFAULT_METHOD,
    on_video: Callable[[int], None] | None = None,
) -> dict[str, tuple[float, float]]:
    """{tensor name: (low, high)} for the inputs and outputs of every Conv / MatMul / Gemm.

    `videos` is (N, frames, 4, S, S): each item is one input of the static graph.
    """
    onnxruntime()
    from onnxruntime.quantization.calibrate import CalibrationMethod, create_calibrator

    calibration_method = {
        "minmax": CalibrationMethod.MinMax,
        "entropy": CalibrationMethod.Entropy,
        "percentile": CalibrationMethod.Percentile,
    }[check_method(method)]
    # The histogram calibrators print progress to stdout, which carries only results here.
    quiet = contextlib.redirect_stdout(io.StringIO())
    with tempfile.TemporaryDirectory(prefix="panda-calibrate-") as tmp, quiet:
        calibrator = create_calibrator(
            Path(onnx_path),
            list(OP_TYPES),
            augmented_model_path=str(Path(tmp) / "augmented.onnx"),
            calibrate_method=calibration_method,
        )
        for i, frames in enumerate(videos):
            calibrator.collect_data(_OneVideo(np.ascontiguousarray(frames, np.float32)))
            if on_video is not None:
                on_video(i + 1)
        data = calibrator.compute_data()
        del calibrator  # its session holds the augmented file open
    return {name: _low_high(value) for name, value in data.items()}


def _low_high(value: object) -> tuple[float, float]:
    low, high = value.range_value if hasattr(value, "range_value") else value
    return float(np.asarray(low).min()), float(np.asarray(high).max())
