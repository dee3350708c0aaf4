"""stab_int8 on the embedded (trained) tiny model, on the toy world it was trained on, through the commands.

    python benchmarks/int8_tiny_parity.py [--samples N] [--videos N]

Writes the toy world of the tiny model's training (1200 videos, seed 0) to a temporary directory,
exports the tiny model, calibrates on its training videos (`panda calibrate --qa train.json`) and
runs `panda parity --levels stab_fp32,stab_int8` on held-out videos (never seen in training nor in
calibration). Writes benchmarks/results/stab_int8_tiny.json (parity) and
benchmarks/results/stab_int8_tiny_calibration.json (the calibration report); the numbers there
come from this command only.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from pathlib import Path

# The script's folder is on sys.path when it runs: one CLI runner for both INT8 parity scripts.
from int8_full_parity import run

from panda_edge.assets import TINY_TRAINING
from panda_edge.calibration.data import spread
from panda_edge.toyworld.writer import generate

RESULTS = Path(__file__).parent / "results"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=16)
    parser.add_argument("--videos", type=int, default=32, help="held-out videos to check")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="panda-int8-tiny-") as tmp:
        toy = Path(tmp) / "toy"
        generate(toy, videos=TINY_TRAINING["videos"], seed=TINY_TRAINING["seed"])
        bundle = Path(tmp) / "bundle"
        run(["export", "--target", "onnx", "--checkpoint", "tiny", "--out", str(bundle)])
        report = RESULTS / "stab_int8_tiny_calibration.json"
        run(
            [
                "calibrate", "--bundle", str(bundle), "--qa", str(toy / "train.json"),
                "--samples", str(options.samples), "--json", str(report),
            ]
        )  # fmt: skip
        heldout = list(dict.fromkeys(q["video"] for q in json.loads((toy / "heldout.json").read_text())))
        videos = [str(toy / "videos" / name) for name in spread(heldout, options.videos)]
        parity = RESULTS / "stab_int8_tiny.json"
        args = ["parity", "--checkpoint", "tiny", "--bundle", str(bundle), "--levels", "stab_fp32,stab_int8"]
        run([*args, "--json", str(parity), *videos])


if __name__ == "__main__":
    main()
