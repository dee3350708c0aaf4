"""PyTorch eager fp32 vs ONNX Runtime fp32 and INT8 on the full-size STAB + projector (random weights).

    python benchmarks/bench_vision.py [--repeat N]   # same as: panda bench vision --preset full --json ...

Writes benchmarks/results/vision.json; the numbers there come from this command only
(`vision_fp32.json` is the earlier fp32-only run).
"""

from __future__ import annotations

import sys
from pathlib import Path

from panda_edge.cli.main import app


def main() -> None:
    out = Path(__file__).parent / "results" / "vision.json"
    app(["bench", "vision", "--preset", "full", "--json", str(out), *sys.argv[1:]])


if __name__ == "__main__":
    main()
