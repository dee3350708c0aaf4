"""`--ray`: a QA set's work items answered by Ray actors, each holding one opened `AnswererSpec`.

Each actor loads what answers once (the reference, the runtime bundle, or both; a GPU when the
cluster has them), then takes items from Ray's ActorPool. A worker that dies is restarted by Ray and
its item retried (`max_restarts`, `max_task_retries`); a retried item's records are kept once, by
question id (parity.qa_jobs). The checkpoint, bundle and videos must be readable at the same paths on
every node (a shared filesystem).
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from panda_edge.errors import PandaError
from panda_edge.optional import require
from panda_edge.parity.qa_jobs import AnswererSpec, Runner, WorkItem

RESTARTS = 3


class QAWorker:
    """One Ray actor: an opened AnswererSpec."""

    def __init__(self, spec: AnswererSpec) -> None:
        self.answerers = spec.open()

    def answer(self, item: WorkItem, videos_dir: str) -> list[dict[str, Any]]:
        return self.answerers.answer(item, Path(videos_dir))

    def pid(self) -> int:
        import os

        return os.getpid()


def connect(address: str) -> bool:
    """Join the cluster at `address` ('auto': the running one) or start one here ('local'); True
    when this call started Ray (and so should stop it)."""
    ray = require("ray", "ray")
    if ray.is_initialized():
        return False
    try:
        where = None if address == "local" else address
        ray.init(address=where, include_dashboard=False, log_to_driver=False)
    except ConnectionError as exc:
        raise PandaError(f"--ray {address}: no Ray cluster there ({exc}); 'local' starts one here") from None
    return True


def ray_runner(address: str, workers: int | None = None, on_workers: Any = None) -> Runner:
    """A runner (parity.qa_jobs) on a Ray cluster: `workers` actors (default: one per CPU of the
    cluster, or per GPU when it has GPUs). `on_workers(actors)` sees the actors once started."""

    def run(spec: AnswererSpec, items: Sequence[WorkItem], videos_dir: Path) -> Iterator[list[dict]]:
        ray = require("ray", "ray")
        from ray.util import ActorPool

        started = connect(address)
        try:
            if not items:
                return
            resources = ray.cluster_resources()
            gpus = int(resources.get("GPU", 0))
            count = workers or max(1, gpus or int(resources.get("CPU", 1)))
            actor = ray.remote(max_restarts=RESTARTS, max_task_retries=RESTARTS)(QAWorker)
            options = {"num_gpus": 1, "num_cpus": 1} if gpus else {"num_cpus": 1}  # GPU: one each
            actors = [actor.options(**options).remote(spec) for _ in range(min(count, len(items)))]
            if on_workers is not None:
                on_workers(actors)
            pool = ActorPool(actors)
            folder = str(videos_dir.resolve())
            yield from pool.map_unordered(lambda a, item: a.answer.remote(item, folder), list(items))
            for a in actors:
                ray.kill(a)
        finally:
            if started:
                ray.shutdown()

    return run
