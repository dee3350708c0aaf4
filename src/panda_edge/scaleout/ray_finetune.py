"""`panda finetune --ray ADDRESS --workers N`: the same fine-tuning, data parallel on Ray Train.

Each worker builds the same job (train/finetune.py: same LoRA initialization, same example order)
and takes every N-th example of each global batch. A worker's loss is the summed cross entropy of its
answers' tokens divided by the whole batch's token count, and the gradients are summed over the
workers (gloo all-reduce), so a step is the single-process step on the same global batch, up to the
order of float additions.

Rank 0 reports a checkpoint (trainable weights, AdamW and schedule state, the losses so far) every
`save_every` steps to OUT/ray/finetune. A worker that dies is replaced and the group resumes from the
last checkpoint (FailureConfig); running the command again with the same --out resumes a run whose
driver stopped (Ray Train restores a run by its storage path and name). The checkpoint, data and OUT
must be readable at the same paths on every node (a shared filesystem).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Any

from panda_edge.errors import PandaError
from panda_edge.fileio import atomic_path, write_json
from panda_edge.optional import require
from panda_edge.scaleout.ray_qa import connect
from panda_edge.train.finetune import LOG_FILE, FinetuneResult, FinetuneSpec, Progress, read_state

RUN_NAME = "finetune"
STATE = "state.pt"
MAX_FAILURES = 3
PIDS = "workers"  # OUT/ray/workers/rank<N>.pid: the processes training now


def _train_loop(config: dict[str, Any]) -> None:
    """One Ray Train worker (runs in its own process)."""
    import ray.train
    import torch
    import torch.distributed as dist

    from panda_edge.train.data import IGNORE
    from panda_edge.train.finetune import read_state, save_state, start_run

    torch.set_num_threads(config["threads"])
    context = ray.train.get_context()
    rank, world = context.get_world_rank(), context.get_world_size()
    pids = Path(config["out_dir"]) / "ray" / PIDS
    pids.mkdir(parents=True, exist_ok=True)
    with atomic_path(pids / f"rank{rank}.pid") as tmp:
        tmp.write_text(str(os.getpid()))
    spec = FinetuneSpec(**config["spec"])
    state = None
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = read_state(Path(directory) / STATE, spec)  # another spec: refused before loading
    run = start_run(spec, state)
    del state
    job, total, optimizer, losses = run.job, run.total, run.optimizer, run.losses
    started = time.perf_counter()
    for step in range(run.first, total):
        batch = job.batch(run.order, step)
        tokens = sum(sum(label != IGNORE for label in ex.labels) for ex in batch)
        mine = batch[rank::world]
        loss_sum = job.loss(mine, reduction="sum") if mine else torch.zeros((), requires_grad=True)
        optimizer.zero_grad(set_to_none=False)
        (loss_sum / tokens).backward()
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in job.params]
        flat = torch.cat([g.flatten() for g in grads] + [loss_sum.detach().reshape(1)])
        dist.all_reduce(flat)  # sum over workers
        offset = 0
        for p, g in zip(job.params, grads, strict=True):
            p.grad = flat[offset : offset + g.numel()].view_as(p).clone()
            offset += g.numel()
        torch.nn.utils.clip_grad_norm_(job.params, 1.0)
        optimizer.step()
        run.schedule.step()
        losses.append(round(float(flat[-1]) / tokens, 5))
        last = step + 1 == total
        if (step + 1) % config["save_every"] == 0 or last:
            metrics = {"step": step + 1, "loss": losses[-1]}
            with tempfile.TemporaryDirectory() as directory:
                saved = None
                if rank == 0:
                    save_state(Path(directory) / STATE, run.state(step + 1))
                    saved = ray.train.Checkpoint.from_directory(directory)
                ray.train.report(metrics, checkpoint=saved)
    if rank == 0:
        out_dir = Path(config["out_dir"])
        adapter = job.save(out_dir)
        result = FinetuneResult(
            out_dir, spec.method, total, losses, job.trainable_parameters, 0.0, adapter, world, run.resumed_at
        )
        write_json(out_dir / LOG_FILE, {**result.to_dict(), "worker_seconds": time.perf_counter() - started})


def ray_finetune(
    spec: FinetuneSpec,
    out_dir: Path,
    address: str,
    workers: int | None = None,
    progress: Progress | None = None,
    save_every: int = 50,
    threads: int = 1,
) -> FinetuneResult:
    """Fine-tune on `workers` Ray Train workers (default 2) of the cluster at `address`."""
    require("ray", "ray")
    try:
        from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
        from ray.train.torch import TorchConfig, TorchTrainer
    except ImportError as exc:
        raise PandaError(f"--ray needs Ray Train: pip install 'ray[train]' ({exc})") from None
    if spec.device != "cpu":
        raise PandaError("--ray trains on the workers' CPUs here; use --device cpu")
    progress = progress or Progress()
    out_dir = Path(out_dir).resolve()
    # Ray Train goes on from the run's checkpoints under OUT/ray: saved under another spec they are
    # refused here, in one line, rather than in every worker
    for saved in sorted((out_dir / "ray" / RUN_NAME).rglob(STATE)):
        read_state(saved, spec, mmap=True)
    started = connect(address)
    start = time.perf_counter()
    try:
        trainer = TorchTrainer(
            _train_loop,
            train_loop_config={
                "spec": asdict(spec),
                "out_dir": str(out_dir),
                "save_every": save_every,
                "threads": threads,
            },
            torch_config=TorchConfig(backend="gloo"),
            scaling_config=ScalingConfig(num_workers=workers or 2, use_gpu=False),
            run_config=RunConfig(
                name=RUN_NAME,
                storage_path=str(out_dir / "ray"),
                checkpoint_config=CheckpointConfig(num_to_keep=2),
                failure_config=FailureConfig(max_failures=MAX_FAILURES),
            ),
        )
        progress.on_message(f"training on {workers or 2} Ray Train workers")
        trainer.fit()
    except Exception as exc:
        if type(exc).__module__.startswith("ray"):
            raise PandaError(f"Ray Train failed: {str(exc).strip().splitlines()[0]}") from None
        raise
    finally:
        if started:
            require("ray", "ray").shutdown()
    log = json.loads((out_dir / LOG_FILE).read_text())
    result = FinetuneResult(
        out_dir,
        log["method"],
        log["steps"],
        log["losses"],
        log["trainable_parameters"],
        round(time.perf_counter() - start, 1),
        None if log["adapter"] is None else Path(log["adapter"]),
        log["workers"],
        log["resumed_at"],
    )
    return result
