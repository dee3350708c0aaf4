"""The thread-count rule (`host.default_threads`): the cores this process may use, less those other
processes keep busy; what `--threads` overrides."""

from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from panda_edge.host import available_cores, busy_cores, default_threads, use_threads


def test_given_threads_win_and_must_be_positive() -> None:
    assert default_threads(3) == 3
    with pytest.raises(ValueError, match="at least 1"):
        default_threads(0)


def test_steady_threads_are_every_core_this_process_may_use() -> None:
    """Training's count must not depend on the load (its weights depend on the thread count)."""
    assert default_threads(steady=True) == available_cores() == len(os.sched_getaffinity(0))


def test_a_core_held_busy_by_another_process_is_left_out() -> None:
    cores = sorted(os.sched_getaffinity(0))
    pin = f"import os; os.sched_setaffinity(0, {{{cores[-1]}}})\nwhile True: pass"
    hog = subprocess.Popen([sys.executable, "-c", pin])
    try:
        time.sleep(0.3)  # started and spinning
        assert busy_cores(0.3) >= 1
        # a process that starts now counts it (each process samples the load once, when it starts)
        code = "from panda_edge.host import default_threads; print(default_threads())"
        started = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
        assert 1 <= int(started.stdout) <= max(1, len(cores) - 1)
    finally:
        hog.kill()
        hog.wait()


def test_use_threads_sets_pytorchs_pool() -> None:
    import torch

    before = torch.get_num_threads()
    try:
        assert use_threads(1) == 1 and torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
