"""Peak memory of the streaming GGUF conversion (see panda_edge.bench.gguf_memory).

    python benchmarks/gguf_peak_rss.py [--layers 3] [--workdir DIR]

Writes benchmarks/results/gguf_peak_rss.json; `panda bench all` measures the same into all.json.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from panda_edge.bench.gguf_memory import bench_gguf_memory
from panda_edge.fileio import write_json

RESULT = Path(__file__).parent / "results" / "gguf_peak_rss.json"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="where the synthetic files go (deleted)")
    args = parser.parse_args()
    result = bench_gguf_memory(args.layers, args.workdir)
    write_json(RESULT, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
