"""panda finetune --ray: data-parallel LoRA on a local Ray cluster (two workers) reaches the
single-process losses on the same data and global batch, and a worker killed mid-run is replaced
and the run goes on from the last checkpoint."""

from __future__ import annotations

import importlib.util
import json
import os
import signal
import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from panda_edge.toyworld.writer import generate
from panda_edge.train.finetune import FinetuneSpec, finetune

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("ray") is None or importlib.util.find_spec("pandas") is None,
    reason="--ray needs Ray Train (pip install 'ray[train]')",
)
# Per-step losses of two workers against one process: the same sums in another order (float32).
LOSS_TOLERANCE = 1e-3


@pytest.fixture(scope="module")
def cluster():
    ray = pytest.importorskip("ray")
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def spec(tmp_path_factory: pytest.TempPathFactory) -> FinetuneSpec:
    world = tmp_path_factory.mktemp("world")
    generate(world, videos=24, seed=3, rule="reversed-motion", workers=1)
    return FinetuneSpec("tiny", str(world), lr=5e-3, epochs=4, batch_size=4)


@pytest.fixture(scope="module")
def single(spec: FinetuneSpec, tmp_path_factory: pytest.TempPathFactory):
    torch.set_num_threads(1)
    out = tmp_path_factory.mktemp("single")
    return out, finetune(spec, out)


def _registered(snapshot: Path) -> bool:
    try:
        return bool(json.loads(snapshot.read_text())["checkpoint_results"])
    except (OSError, ValueError, KeyError):
        return False


def _close(a: list[float], b: list[float]) -> float:
    assert len(a) == len(b)
    return max(abs(x - y) for x, y in zip(a, b, strict=True))


def test_two_workers_reach_the_single_process_losses(spec, single, cluster, tmp_path: Path) -> None:
    from panda_edge.scaleout.ray_finetune import ray_finetune

    single_out, one = single
    two = ray_finetune(spec, tmp_path, "auto", workers=2)
    assert two.workers == 2 and two.steps == one.steps >= 15
    assert one.losses[-1] < 0.6 * one.losses[0]  # it learns
    assert _close(two.losses, one.losses) <= LOSS_TOLERANCE
    a, b = (
        load_file(single_out / "adapter" / "adapter_model.safetensors"),
        load_file(tmp_path / "adapter" / "adapter_model.safetensors"),
    )
    assert set(a) == set(b)
    assert all(torch.allclose(a[k], b[k], atol=1e-3, rtol=1e-2) for k in a)


def test_a_killed_worker_is_resumed_from_the_last_checkpoint(spec, single, cluster, tmp_path: Path) -> None:
    from panda_edge.scaleout.ray_finetune import PIDS, RUN_NAME, ray_finetune

    killed: list[int] = []
    runs, pids = tmp_path / "ray" / RUN_NAME, tmp_path / "ray" / PIDS

    def kill_after_first_checkpoint() -> None:
        """Kill rank 1 once Ray Train has registered a checkpoint (its snapshot names one; a checkpoint
        directory alone may still wait for the other worker's report)."""
        snapshot = runs / "checkpoint_manager_snapshot.json"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if _registered(snapshot):
                pid = int((pids / "rank1.pid").read_text())
                os.kill(pid, signal.SIGKILL)
                killed.append(pid)
                return
            time.sleep(0.02)

    watcher = threading.Thread(target=kill_after_first_checkpoint, daemon=True)
    watcher.start()
    result = ray_finetune(spec, tmp_path, "auto", workers=2, save_every=2)
    watcher.join(timeout=1)
    assert killed, "the run finished before a worker could be killed"
    assert result.resumed_at and result.resumed_at[0] >= 2 and result.resumed_at[0] % 2 == 0
    assert int((pids / "rank1.pid").read_text()) != killed[0]  # a new process took rank 1
    _, one = single
    assert _close(result.losses, one.losses) <= LOSS_TOLERANCE
