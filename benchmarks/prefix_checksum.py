"""What the prefix cache's checksum costs: sha256 over a 565 MB file (a 7B prefix) on this machine.

    python benchmarks/prefix_checksum.py [--mb 565] [--repeat 5] [--workdir DIR]

Writes a file of random bytes in a temporary directory (deleted after), hashes it with the function
the prefix cache uses (`panda_edge.bundle.sha256_file`) `--repeat` times, and beside it BLAKE2b, the
other full-file hash the standard library has, and xxHash's XXH3-128 when the `xxhash` package is
installed (what a new dependency would buy; a checksum must catch a flipped byte anywhere, so a
sampled hash is no candidate). The file was just written, so it is in the page cache:
this is the hash's time, not the disk's. Writes benchmarks/results/prefix_checksum.json.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.util
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from panda_edge.bundle import sha256_file
from panda_edge.fileio import write_json
from panda_edge.host import available_cores, cpu_info, load_average

RESULT = Path(__file__).parent / "results" / "prefix_checksum.json"


def blake2b_file(path: Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "blake2b").hexdigest()


def xxh3_file(path: Path) -> str:
    import xxhash

    digest = xxhash.xxh3_128()
    with open(path, "rb") as f:
        while block := f.read(1 << 20):
            digest.update(block)
    return digest.hexdigest()


def timed(hash_file: Callable[[Path], str], path: Path, repeat: int) -> dict[str, float]:
    """Median and spread of `repeat` runs over `path`, in seconds, and the rate in MB/s."""
    seconds = []
    for _ in range(repeat):
        start = time.perf_counter()
        hash_file(path)
        seconds.append(time.perf_counter() - start)
    median = statistics.median(seconds)
    return {
        "median_s": round(median, 4),
        "min_s": round(min(seconds), 4),
        "max_s": round(max(seconds), 4),
        "mb_per_s": round(path.stat().st_size / 1e6 / median, 1),
    }


def bench_prefix_checksum(megabytes: int, repeat: int, workdir: Path | None = None) -> dict:
    cpu, features = cpu_info()
    before = load_average()
    with tempfile.TemporaryDirectory(dir=workdir) as tmp:
        path = Path(tmp) / "prefix.kv"
        with open(path, "wb") as f:
            for _ in range(megabytes):
                f.write(os.urandom(1_000_000))
        chosen = timed(sha256_file, path, repeat)
        compared = {"blake2b (hashlib.file_digest)": timed(blake2b_file, path, repeat)}
        if importlib.util.find_spec("xxhash") is not None:
            compared["xxh3_128 (xxhash, not a dependency)"] = timed(xxh3_file, path, repeat)
    return {
        "file_mb": megabytes,
        "repeat": repeat,
        "chosen": {"hash": "sha256 (panda_edge.bundle.sha256_file)", **chosen},
        "compared": compared,
        "machine": {
            "cpu": cpu,
            "features": features,
            "cores": available_cores(),
            "load_average_before": before,
            "load_average_after": load_average(),
        },
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=int, default=565, help="file size in MB (a 7B prefix is ~565)")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--workdir", type=Path, default=None, help="where the file goes (deleted)")
    args = parser.parse_args()
    result = bench_prefix_checksum(args.mb, args.repeat, args.workdir)
    write_json(RESULT, result)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
