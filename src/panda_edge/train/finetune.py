"""`panda finetune`: adapt a released (or our own) checkpoint to a user's videos.

Methods: `lora` (default) wraps the Llama's attention and MLP projections (train/lora.py) and trains
only the low-rank updates, the base weights kept frozen in their stored 16 bits; `projector` trains
the vision -> LLM projector only; `full` trains the whole Llama and the projector in the compute
dtype (float32 weights, gradients and AdamW state: 7B does not fit a 24 GB machine, the memory check
says so). STAB is frozen in every method, so each video's tokens are computed once and kept for the
run (after the projector, or before it when the projector trains).

Data are what `panda train` reads: a directory with `train.json` (Video-ChatGPT style conversations,
`panda toyworld` writes one) and `videos/`. Each video's questions train as branches after its shared
prefix (train/data.py), the answers' tokens alone carry the loss.

Memory is checked before anything loads (`finetune_bytes`): the weights as kept, the trainable
parameters with their gradients and AdamW state, the decoded frames and kept visual tokens, and the
activations of one batch, with gradient checkpointing (on for any Llama deeper than 4 layers) one
layer's at a time. The output directory holds the released checkpoint layout with the update merged
(so `panda export`, `panda parity` and `panda eval` take it as it is) and, for LoRA, `adapter/`.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from panda_edge.config import ModelConfig, read_config
from panda_edge.errors import PandaError
from panda_edge.fileio import atomic_path, write_json
from panda_edge.memory import GB, check_memory
from panda_edge.model.checkpoint import VIDEO_PROJECTOR, VIDEO_TOWER, canonical_name, weight_files
from panda_edge.model.loading import (
    DTYPES,
    PROCESS_BYTES,
    ReferencePrecision,
    build_on_meta,
    stored_llm_dtype,
    tensor_specs,
    weight_bytes,
    widenable,
)
from panda_edge.model.videopanda import VideoPanda, resolve_checkpoint
from panda_edge.train import lora
from panda_edge.train.data import Example, build_examples, load_frames, read_qa
from panda_edge.train.trainer import TrainingLoss, cosine_with_warmup

METHODS = ("lora", "projector", "full")
DEFAULT_LR = {"lora": 2e-4, "projector": 1e-4, "full": 2e-5}
ADAPTER_DIR = "adapter"
STATE_FILE = "finetune_state.pt"
LOG_FILE = "finetune_log.json"
WARMUP_RATIO = 0.03
SHARD_BYTES = 5_000_000_000  # the merged checkpoint in shards of at most 5 GB, as released checkpoints come
TEXT_TOKENS = 256  # the prompt's text and the answers, besides the visual tokens (for the memory check)
CHECKPOINTING_FROM_LAYERS = 5  # gradient checkpointing for any Llama deeper than the tiny one's


@dataclass(frozen=True)
class FinetuneSpec:
    """What to fine-tune and how; everything a data-parallel worker needs to build the same job."""

    checkpoint: str
    data_dir: str  # a directory with train.json and videos/, or a QA JSON file (then `videos_dir`)
    method: str = "lora"
    rank: int = 8
    alpha: float | None = None  # default 2 x rank
    targets: tuple[str, ...] = lora.TARGETS
    epochs: float = 1.0
    lr: float | None = None  # default DEFAULT_LR[method]
    batch_size: int = 4
    dtype: str = "fp32"
    device: str = "cpu"
    seed: int = 0
    checkpointing: bool | None = None  # None: on for Llamas deeper than the tiny one
    videos_dir: str | None = None  # default: DATA/videos, or videos/ beside a QA file

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise PandaError(f"unknown --method '{self.method}'; choose one of: {', '.join(METHODS)}")
        if self.epochs <= 0 or self.batch_size < 1 or self.rank < 1:
            raise PandaError("--epochs must be positive, --batch-size and --rank at least 1")
        ReferencePrecision(self.dtype, self.device)  # exit 2 for an unknown dtype or no CUDA

    @property
    def precision(self) -> ReferencePrecision:
        return ReferencePrecision(self.dtype, self.device)

    @property
    def learning_rate(self) -> float:
        return self.lr if self.lr is not None else DEFAULT_LR[self.method]

    @property
    def lora_alpha(self) -> float:
        return self.alpha if self.alpha is not None else 2.0 * self.rank


@dataclass
class Progress:
    on_start: Callable[[int], None] = lambda total: None
    on_step: Callable[[int, float], None] = lambda step, loss: None
    on_message: Callable[[str], None] = lambda text: None


@dataclass
class FinetuneResult:
    out_dir: Path
    method: str
    steps: int
    losses: list[float] = field(default_factory=list)  # per optimizer step, as run (resumed: from there)
    trainable_parameters: int = 0
    seconds: float = 0.0
    adapter: Path | None = None
    workers: int = 1
    resumed_at: list[int] = field(default_factory=list)  # steps a run went on from a saved state
    step_seconds: list[float] = field(default_factory=list)  # wall time of each optimizer step run here

    def to_dict(self) -> dict:
        return {
            "out_dir": str(self.out_dir),
            "method": self.method,
            "steps": self.steps,
            "trainable_parameters": self.trainable_parameters,
            "first_loss": self.losses[0] if self.losses else None,
            "final_loss": self.losses[-1] if self.losses else None,
            "losses": self.losses,
            "seconds": self.seconds,
            "adapter": None if self.adapter is None else str(self.adapter),
            "workers": self.workers,
            "resumed_at": self.resumed_at,
            "step_seconds": self.step_seconds,
        }


# --- memory -------------------------------------------------------------------------------------


def visual_tokens_per_frame(config: ModelConfig) -> int:
    """1 context token + rows of (LSD tokens + split) for a square frame (273 at 448 px)."""
    side = config.vision.grid // config.vision.conv_stride
    return 1 + side * (side + 1)


def trainable_count(model: nn.Module, spec: FinetuneSpec) -> int:
    """Parameters the method trains, counted on a model built on the meta device."""
    if spec.method == "projector":
        return sum(p.numel() for p in model.projector.parameters())
    if spec.method == "full":
        return sum(p.numel() for part in (model.llm, model.projector) for p in part.parameters())
    return sum(
        spec.rank * (m.in_features + m.out_features)
        for name, m in model.llm.named_modules()
        if isinstance(m, nn.Linear) and name.rpartition(".")[2] in spec.targets
    )


def finetune_bytes(directory: Path, spec: FinetuneSpec, videos: int) -> dict[str, int]:
    """What a fine-tuning run holds at its peak, by part (bytes); see the module's docstring."""
    config = read_config(directory)
    precision = spec.precision
    model = build_on_meta(lambda: VideoPanda(config))
    parts = {VIDEO_TOWER: model.stab, VIDEO_PROJECTOR: model.projector, "": model.llm}
    specs = tensor_specs(directory)
    stored = {name: specs[n][0] for n in specs if (name := canonical_name(n)) is not None}

    def keeps_16bit(prefix: str, module: nn.Module) -> bool:
        return spec.method != "full" and prefix == "" and widenable(module)

    size = precision.compute.itemsize
    llm, v = config.llm, config.vision
    tokens = v.video_frames * visual_tokens_per_frame(config) + TEXT_TOKENS
    rows = spec.batch_size * tokens
    trainable = trainable_count(model, spec)
    layer_acts = rows * (8 * llm.hidden_size + 4 * llm.intermediate_size) * size
    attention = spec.batch_size * (llm.num_attention_heads + 2) * tokens * tokens * 4
    checkpointing = use_checkpointing(config, spec)
    widened = 0
    if precision.compute == torch.float32 and spec.method != "full":
        layer = sum(p.numel() for p in model.llm.model.layers[0].parameters())
        # widened float32 copies the backward pass keeps: one layer's while it is recomputed, else all
        widened = (2 if checkpointing else llm.num_hidden_layers) * layer * 4
        widened += 2 * llm.vocab_size * llm.hidden_size * 4  # lm_head and the embedding, widened
    need = {
        "process": PROCESS_BYTES,
        "weights": weight_bytes(parts, stored, precision, keeps_16bit),
        # float32 trainable copy (LoRA's own; `full` widens the stored weights), gradient, AdamW's two
        "trainable": trainable * (16 if spec.method != "full" else 12),
        "frames": videos * v.video_frames * 4 * v.image_size**2 * 4,
        "visual_tokens": videos * v.video_frames * visual_tokens_per_frame(config) * llm.hidden_size * size,
        "activations": (
            llm.num_hidden_layers * rows * llm.hidden_size * size + 2 * (layer_acts + attention)
            if checkpointing
            else llm.num_hidden_layers * (layer_acts + attention)
        ),
        "widened_weights": widened,
    }
    return need


def _check_gpu_memory(need: dict[str, int], spec: FinetuneSpec) -> None:
    """--device cuda: what lives on the GPU (all but the process and the decoded frames) against its
    free memory."""
    from panda_edge.memory import NotEnoughMemory

    on_gpu = sum(v for k, v in need.items() if k not in ("process", "frames"))
    free, _ = torch.cuda.mem_get_info()
    if on_gpu > free:
        raise NotEnoughMemory(
            f"fine-tuning ({spec.method}, {spec.dtype}) needs about {on_gpu / GB:.1f} GB of GPU memory and "
            f"{free / GB:.1f} GB is free; {_memory_hint(replace(spec, device='cpu'))}"
        )


def use_checkpointing(config: ModelConfig, spec: FinetuneSpec) -> bool:
    if spec.checkpointing is not None:
        return spec.checkpointing
    return config.llm.num_hidden_layers >= CHECKPOINTING_FROM_LAYERS


def _memory_hint(spec: FinetuneSpec) -> str:
    hints = []
    if spec.method == "full":
        hints.append("--method lora trains 0.1-1% of the parameters against the frozen 16-bit base")
    if spec.batch_size > 1:
        hints.append("--batch-size 1 holds one video's activations")
    if spec.device == "cpu":
        hints.append("--device cuda moves it to a GPU")
    hints.append("or fewer videos in the data")
    return "; ".join(hints)


# --- the job ------------------------------------------------------------------------------------


def training_files(spec: FinetuneSpec) -> tuple[Path, Path]:
    """The QA file and the videos directory `spec` names (exit 2 when either is missing)."""
    data = Path(spec.data_dir)
    qa_file = data if data.is_file() else data / "train.json"
    videos = Path(spec.videos_dir) if spec.videos_dir else qa_file.parent / "videos"
    if not qa_file.is_file():
        raise PandaError(
            f"{data}: no train.json (Video-ChatGPT style conversations, and videos/); or give a QA file"
        )
    if not videos.is_dir():
        raise PandaError(f"{videos}: no such videos directory (--videos)")
    return qa_file, videos


class FinetuneLoss(TrainingLoss):
    """TrainingLoss over a frozen STAB: each video's tokens are computed once; when the projector
    trains, they are kept before it and projected at every step."""

    def __init__(self, model: VideoPanda, frames: Tensor, projector_trains: bool) -> None:
        super().__init__(model, frames, None, None)
        self.projector_trains = projector_trains
        self.frozen_vision = True

    def visual(self, videos: Sequence[int]) -> dict[int, list[Tensor]]:
        if not self.projector_trains:
            return super().visual(videos)
        cache = self._visual_cache
        todo = [v for v in videos if v not in cache]
        if todo:
            n = self.model.config.vision.video_frames
            with torch.no_grad():
                tokens = self.model.encode_frames(self.video_frames(todo).flatten(0, 1), project=False)
            cache.update({v: tokens[i * n : (i + 1) * n] for i, v in enumerate(todo)})
        return {v: [self.model.projector(t) for t in cache[v]] for v in videos}


def return_freed_memory() -> None:
    """Make glibc's malloc give freed activation buffers back to the system.

    Its mmap threshold grows with every large block freed (up to 32 MB), after which blocks below it
    come from the heap and stay there when freed: at 7B on a 2:1 clip the process grew ~200 MB per
    layer of a step (a 4096-wide hidden state in bfloat16 is 9.4 MB), and a step that fits by its
    tensors was killed at 22.7 GB. A fixed 1 MB threshold (as MALLOC_MMAP_THRESHOLD_ would set) keeps
    the peak at what the tensors hold (measured on an 8-layer 4096-wide Llama: 6.6 -> 4.8 GB)."""
    import ctypes
    import sys

    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return
    m_trim_threshold, m_mmap_threshold = -1, -3
    libc.mallopt(m_mmap_threshold, 1 << 20)
    libc.mallopt(m_trim_threshold, 1 << 20)


class FinetuneJob:
    """One process's copy of a fine-tuning run: the model with what trains, the data, the loss."""

    def __init__(self, spec: FinetuneSpec, progress: Progress | None = None) -> None:
        return_freed_memory()
        self.spec = spec
        self.progress = progress or Progress()
        qa_file, videos_dir = training_files(spec)
        self.directory = resolve_checkpoint(spec.checkpoint)
        conversations = read_qa(qa_file, videos_dir)
        if not conversations:
            raise PandaError(f"{qa_file}: no conversations to train on")
        names = sorted({c.video for c in conversations})
        need = finetune_bytes(self.directory, spec, len(names))
        check_memory(
            sum(need.values()),
            f"fine-tuning ({spec.method}, {spec.dtype} on {spec.device}, batch {spec.batch_size}, "
            f"{len(names)} videos)",
            _memory_hint(spec),
        )
        if spec.device == "cuda":
            _check_gpu_memory(need, spec)
        self.need = need
        config = read_config(self.directory)
        tokens = config.vision.video_frames * visual_tokens_per_frame(config) + TEXT_TOKENS
        peak = sum(need.values()) / GB
        self.progress.on_message(f"loading {self.directory} ({spec.dtype}, ~{peak:.1f} GB at the peak)")
        model = VideoPanda.from_pretrained(self.directory, spec.precision, tokens=tokens)
        self.stored_dtype = DTYPES.get(
            {"float16": "fp16", "bfloat16": "bf16"}.get(stored_llm_dtype(self.directory), "fp32")
        )
        model.requires_grad_(False)
        if spec.method == "lora":
            lora.wrap(model.llm, spec.rank, spec.lora_alpha, spec.targets, spec.seed)
            self.params = [p for m in lora.wrapped(model.llm).values() for p in (m.lora_A, m.lora_B)]
        elif spec.method == "projector":
            self.params = list(model.projector.parameters())
        else:
            model.llm.to(spec.precision.compute)
            self.params = [*model.llm.parameters(), *model.projector.parameters()]
        for p in self.params:
            p.requires_grad_(True)
        if use_checkpointing(model.config, spec):
            # non-reentrant: the LoRA weights inside a layer get their gradients through the recompute
            model.llm.activation_checkpointing_enable(
                activation_checkpointing_kwargs={"use_reentrant": False}
            )
        model.eval()
        model.llm.train()  # gradient checkpointing runs in training mode; the Llama has no dropout
        self.model = model
        self.progress.on_message(f"decoding {len(names)} training videos")
        frames = load_frames(videos_dir, names, config.vision)
        index = {name: i for i, name in enumerate(names)}
        self.examples: list[Example] = build_examples(
            conversations, model.tokenizer, index, config.vision.video_frames, packed=True
        )
        self.loss = FinetuneLoss(model, frames, spec.method == "projector")

    @property
    def trainable_parameters(self) -> int:
        return sum(p.numel() for p in self.params)

    def schedule(self) -> tuple[list[int], int]:
        """The example order for all epochs (one permutation per epoch, a fractional last epoch cut
        short) and the number of optimizer steps."""
        rng = np.random.default_rng(self.spec.seed)
        n = len(self.examples)
        order = np.concatenate([rng.permutation(n) for _ in range(math.ceil(self.spec.epochs))])
        order = order[: max(1, math.ceil(n * self.spec.epochs))].tolist()
        return order, math.ceil(len(order) / self.spec.batch_size)

    def batch(self, order: list[int], step: int) -> list[Example]:
        size = self.spec.batch_size
        return [self.examples[i] for i in order[step * size : (step + 1) * size]]

    def optimizer(self, total: int) -> tuple[torch.optim.Optimizer, torch.optim.lr_scheduler.LRScheduler]:
        optimizer = torch.optim.AdamW(self.params, lr=self.spec.learning_rate, weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(total, WARMUP_RATIO))
        return optimizer, schedule

    def trainable_state(self) -> dict[str, Tensor]:
        return {str(i): p.detach().clone() for i, p in enumerate(self.params)}

    def load_trainable_state(self, state: dict[str, Tensor]) -> None:
        with torch.no_grad():
            for i, p in enumerate(self.params):
                p.copy_(state[str(i)])

    def save(self, out_dir: Path) -> Path | None:
        """The merged checkpoint in the released layout (weights in the base's stored dtype) and, for
        LoRA, the adapter alone; returns the adapter's directory."""
        model, adapter = self.model, None
        if model.llm.is_activation_checkpointing:
            model.llm.activation_checkpointing_disable()
        model.eval()
        if self.spec.method == "lora":
            config = lora.AdapterConfig(
                r=self.spec.rank,
                lora_alpha=self.spec.lora_alpha,
                target_modules=tuple(self.spec.targets),
                base_checkpoint_sha256=lora.checkpoint_sha256(weight_files(self.directory)),
                base_model_name_or_path=str(self.spec.checkpoint),
            )
            adapter = out_dir / ADAPTER_DIR
            lora.save_adapter(adapter, model.llm, config)
            lora.merge(model.llm)
        _convert_in_place(model, self.stored_dtype)  # not a whole second copy (13.5 GB at 7B)
        model.save_pretrained(out_dir, max_shard_bytes=SHARD_BYTES)
        return adapter


def _convert_in_place(model: nn.Module, dtype: torch.dtype) -> None:
    """Every floating-point weight and buffer of `model` in `dtype`, one tensor at a time: the peak is
    one tensor's copy (save_pretrained's `dtype` converts all of them before writing)."""
    with torch.no_grad():
        for module in model.modules():
            for table in (module._parameters, module._buffers):
                for name, tensor in table.items():
                    if tensor is None or not tensor.is_floating_point() or tensor.dtype == dtype:
                        continue
                    converted = tensor.detach().to(dtype)
                    is_param = table is module._parameters
                    table[name] = nn.Parameter(converted, requires_grad=False) if is_param else converted


# What decides a run's steps and weights: a state saved under other values is not this run's to go on
# with (a changed rank does not load, changed data or epochs would go on silently). Not the device or
# gradient checkpointing: they change neither.
RESUME_FIELDS = (
    "checkpoint",
    "data_dir",
    "videos_dir",
    "method",
    "rank",
    "alpha",
    "targets",
    "epochs",
    "lr",
    "batch_size",
    "dtype",
    "seed",
)


def _where(value: str | None) -> str | None:
    """A path as an absolute one (the same directory given two ways is one); a name ('tiny') as is."""
    return None if value is None or not Path(value).exists() else str(Path(value).resolve())


def resume_spec(spec: FinetuneSpec) -> dict[str, object]:
    """The spec's `RESUME_FIELDS`, defaults applied, as plain values (saved in the state, loadable with
    torch.load(weights_only=True))."""
    values = {name: getattr(spec, name) for name in RESUME_FIELDS}
    values |= {"alpha": spec.lora_alpha, "lr": spec.learning_rate, "targets": list(spec.targets)}
    for name in ("checkpoint", "data_dir", "videos_dir"):
        values[name] = _where(values[name]) or values[name]
    return values


@dataclass
class Run:
    """A run's moving parts: the job, its example order and step count, AdamW and the schedule, and
    what the steps so far gave (`first`: the step it starts or resumes at)."""

    spec: FinetuneSpec
    job: FinetuneJob
    order: list[int]
    total: int
    optimizer: torch.optim.Optimizer
    schedule: torch.optim.lr_scheduler.LRScheduler
    first: int = 0
    losses: list[float] = field(default_factory=list)
    resumed_at: list[int] = field(default_factory=list)

    def state(self, step: int) -> dict:
        """What a run resumes from after `step` steps: the step, the losses so far, the trainable
        weights, AdamW and the schedule, and the spec they were trained under."""
        return {
            "spec": resume_spec(self.spec),
            "step": step,
            "losses": self.losses,
            "resumed_at": self.resumed_at,
            "trainable": self.job.trainable_state(),
            "optimizer": self.optimizer.state_dict(),
            "schedule": self.schedule.state_dict(),
        }


def start_run(spec: FinetuneSpec, state: dict | None, progress: Progress | None = None) -> Run:
    """The job built (seeded) with its optimizer and schedule, from step 0 or from a `read_state`."""
    torch.manual_seed(spec.seed)
    job = FinetuneJob(spec, progress)
    order, total = job.schedule()
    optimizer, schedule = job.optimizer(total)
    run = Run(spec, job, order, total, optimizer, schedule)
    if state is not None:
        job.load_trainable_state(state["trainable"])
        optimizer.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        run.first = state["step"]
        run.losses = list(state["losses"])
        run.resumed_at = [*state.get("resumed_at", []), run.first]
    return run


def save_state(path: Path, state: dict) -> None:
    """`Run.state` written atomically."""
    with atomic_path(path) as tmp:
        torch.save(state, tmp)


def read_state(path: Path, spec: FinetuneSpec, mmap: bool = False) -> dict:
    """A saved `Run.state`, when it was saved under this spec; another spec is a PandaError
    naming the fields that differ (before the model loads). `mmap`: tensors are mapped, not read (to
    check the spec alone)."""
    state = torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    saved = state.get("spec")
    if saved is None:  # saved before specs were recorded: nothing to compare
        return state
    now = resume_spec(spec)
    differ = [f"{name} {saved.get(name)!r} -> {now[name]!r}" for name in now if saved.get(name) != now[name]]
    if differ:
        raise PandaError(
            f"{path} was saved by a run with other options ({'; '.join(differ)}): use a new --out, "
            "or the same options to resume it"
        )
    return state


def finetune(
    spec: FinetuneSpec, out_dir: str | Path, progress: Progress | None = None, save_every: int = 100
) -> FinetuneResult:
    """Fine-tune on one process; resumes from OUT/finetune_state.pt (saved every `save_every` steps)."""
    start = time.perf_counter()
    out_dir = Path(out_dir)
    progress = progress or Progress()
    state_path = out_dir / STATE_FILE
    state = read_state(state_path, spec) if state_path.is_file() else None  # another spec: before loading
    run = start_run(spec, state, progress)
    job, total = run.job, run.total
    if state is not None:
        del state
        progress.on_message(f"resuming at step {run.first} of {total}")
    progress.on_start(total)
    step_seconds = []
    for step in range(run.first, total):
        step_start = time.perf_counter()
        loss = job.loss(job.batch(run.order, step))
        run.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(job.params, 1.0)
        run.optimizer.step()
        run.schedule.step()
        run.losses.append(round(float(loss.detach()), 5))
        step_seconds.append(round(time.perf_counter() - step_start, 3))
        if save_every and (step + 1) % save_every == 0 and step + 1 < total:
            save_state(state_path, run.state(step + 1))
        progress.on_step(step + 1, run.losses[-1])
    progress.on_message(f"writing {out_dir}")
    adapter = job.save(out_dir)
    result = FinetuneResult(
        out_dir,
        spec.method,
        total,
        run.losses,
        job.trainable_parameters,
        round(time.perf_counter() - start, 1),
        adapter,
        resumed_at=run.resumed_at,
        step_seconds=step_seconds,
    )
    write_json(out_dir / LOG_FILE, {**result.to_dict(), "memory_gb": _gb(job.need)})
    state_path.unlink(missing_ok=True)
    return result


def _gb(need: dict[str, int]) -> dict[str, float]:
    return {k: round(v / GB, 3) for k, v in need.items()}
