"""stab_int8 on the full-size STAB + projector (random weights), through the commands a user runs.

    python benchmarks/int8_full_parity.py [--samples N]

Writes a full-size vision-only checkpoint (random weights, the embedded tokenizer) and calibration
clips to a temporary directory, runs `panda export --target onnx --precision int8 --videos CLIPS`
and then `panda parity` on its default clips (square, 16:9, 9:16, 5 frames: none of them a
calibration clip). Writes benchmarks/results/stab_int8_full.json (parity) and
benchmarks/results/stab_int8_full_calibration.json (the manifest's vision_int8); the numbers there
come from this command only.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from panda_edge.assets import tiny_checkpoint
from panda_edge.bundle import VISION_INT8, Manifest
from panda_edge.cli.main import app
from panda_edge.config import PREPROCESSOR_FILE, PRESETS, official_config_dict, preprocessor_dict
from panda_edge.fileio import write_json
from panda_edge.model.checkpoint import TOKENIZER_FILE, VIDEO_PROJECTOR, VIDEO_TOWER
from panda_edge.model.vision import VisionTower
from panda_edge.parity.clips import clip_frames
from panda_edge.video.encode import write_video

RESULTS = Path(__file__).parent / "results"
# (frames, width, height) of the calibration clips: the aspect ratios the parity clips have, other seeds.
CALIBRATION_CLIPS = [
    (16, 448, 448),
    (16, 448, 252),
    (16, 252, 448),
    (16, 448, 336),
    (16, 336, 448),
    (8, 448, 448),
]


def vision_checkpoint(directory: Path, seed: int = 0) -> Path:
    """config.json, preprocessor config, tokenizer and the vision weights only (no 7B LLM)."""
    from safetensors.torch import save_file

    config = PRESETS["full"]
    tower = VisionTower.random(config, seed)
    state = {VIDEO_TOWER + k: v.contiguous() for k, v in tower.stab.state_dict().items()}
    state.update({VIDEO_PROJECTOR + k: v.contiguous() for k, v in tower.projector.state_dict().items()})
    directory.mkdir(parents=True)
    save_file(state, str(directory / "model.safetensors"))
    write_json(directory / "config.json", official_config_dict(config))
    write_json(directory / PREPROCESSOR_FILE, preprocessor_dict(config.vision))
    (directory / TOKENIZER_FILE).write_bytes((tiny_checkpoint() / TOKENIZER_FILE).read_bytes())
    return directory


def calibration_clips(directory: Path, first_seed: int = 100) -> Path:
    directory.mkdir(parents=True)
    for i, (n, width, height) in enumerate(CALIBRATION_CLIPS):
        write_video(directory / f"clip_{i}.mp4", clip_frames(n, width, height, first_seed + i), fps=8)
    return directory


def run(args: list[str]) -> None:
    try:
        app(args)
    except SystemExit as exc:
        if exc.code:
            raise


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--samples", type=int, default=4)
    parser.add_argument("--method", default="entropy")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="panda-int8-full-") as tmp:
        checkpoint = vision_checkpoint(Path(tmp) / "ckpt")
        clips = calibration_clips(Path(tmp) / "clips")
        bundle = Path(tmp) / "bundle"
        run(
            [
                "export", "--target", "onnx", "--precision", "int8", "--checkpoint", str(checkpoint),
                "--out", str(bundle), "--videos", str(clips), "--samples", str(options.samples),
                "--holdout", "2", "--method", options.method,
            ]
        )  # fmt: skip
        parity = RESULTS / "stab_int8_full.json"
        run(["parity", "--checkpoint", str(checkpoint), "--bundle", str(bundle), "--json", str(parity)])
        calibration = Manifest.load(bundle).graph(VISION_INT8).fields
        write_json(RESULTS / "stab_int8_full_calibration.json", calibration)


if __name__ == "__main__":
    main()
