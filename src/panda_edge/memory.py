"""How much memory this process may still take, and a clear error when a job needs more.

Running out of memory is bad input (exit 2 with what is needed and which option helps), not a
crash: a 7B reference that allocates past the machine's memory dies with a raw RuntimeError, or is
killed. Callers that know their need check it before they load anything. No torch here.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from panda_edge.errors import PandaError

log = logging.getLogger(__name__)

GB = 1e9
# A user's cap on what panda-edge may count as free ("as if this machine had only N GB"): for a
# machine shared with other jobs, and for tests of the out-of-memory path.
BUDGET_ENV = "PANDA_MEMORY_BUDGET_GB"


class NotEnoughMemory(PandaError):
    """A job needs more memory than is available; the message says which option helps."""


def available_bytes() -> int:
    """MemAvailable, bounded by the cgroup's limit (containers) and by PANDA_MEMORY_BUDGET_GB."""
    candidates = [_meminfo_available(), _cgroup_headroom()]
    budget = os.environ.get(BUDGET_ENV)
    if budget:
        try:
            candidates.append(int(float(budget) * GB))
        except ValueError:
            raise PandaError(f"{BUDGET_ENV}={budget!r} is not a number of gigabytes") from None
    known = [c for c in candidates if c is not None]
    return min(known) if known else 1 << 62


def check_memory(need: int, what: str, hint: str) -> None:
    """Exit-2 error when `need` bytes are more than are available; `hint` says which option helps."""
    free = available_bytes()
    log.debug("%s needs about %.2f GB of memory, %.2f GB is available", what, need / GB, free / GB)
    if need > free:
        raise NotEnoughMemory(
            f"{what} needs about {need / GB:.1f} GB of memory and {free / GB:.1f} GB is available; {hint}"
        )


def _meminfo_available() -> int | None:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _cgroup_headroom() -> int | None:
    """cgroup v2 memory.max minus the cgroup's anonymous memory (its page cache can be reclaimed)."""
    root = Path("/sys/fs/cgroup")
    try:
        limit = (root / "memory.max").read_text().strip()
        if limit == "max":
            return None
        stat = dict(line.split() for line in (root / "memory.stat").read_text().splitlines())
        return int(limit) - int(stat["anon"])
    except (OSError, ValueError, KeyError):
        return None
