"""One `panda` command in its own process under `/usr/bin/time -v`: its exit status, wall time and
peak RSS (that process's VmHWM), as the full-scale benchmarks record each step a user takes."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path
from typing import Any


def timed_panda(
    name: str, args: list[str], log: Path, stdin: str | None = None, pythonpath: str | None = None
) -> dict[str, Any]:
    """Run `panda ARGS`; its stdout goes to `log` with `.out` for a suffix, its stderr (and time's
    report) to `log`. `pythonpath` goes first on the child's PYTHONPATH (another llama-cpp-python
    build, say)."""
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join(p for p in (pythonpath, env.get("PYTHONPATH")) if p)
    start = time.perf_counter()
    with log.open("w") as err, log.with_suffix(".out").open("w") as out:
        done = subprocess.run(
            ["/usr/bin/time", "-v", sys.executable, "-m", "panda_edge.cli.main", *args],
            stdout=out,
            stderr=err,
            input=stdin,
            text=True,
            env=env,
        )
    wall = time.perf_counter() - start
    text = log.read_text(errors="replace")
    rss = re.search(r"Maximum resident set size \(kbytes\): (\d+)", text)
    record = {
        "command": "panda " + " ".join(args),
        "exit": done.returncode,
        "wall_s": round(wall, 1),
        "peak_rss_mb": round(int(rss.group(1)) / 1024) if rss else None,
        "log": str(log),
    }
    print(f"{name}: exit {record['exit']}, {record['wall_s']} s, {record['peak_rss_mb']} MB", flush=True)
    return record
