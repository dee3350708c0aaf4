"""Training a Video-Panda from a toy-world (or any Video-ChatGPT style) data directory.

`train()` runs the recipe's stages in order, saving the model in the released checkpoint layout
after each one and a resumable state (weights, optimizer, step) every `save_every` steps, so an
interrupted run continues where it stopped. Same seed, same data, same thread count: same weights.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from panda_edge.config import ModelConfig, preset
from panda_edge.errors import PandaError
from panda_edge.fileio import atomic_path, write_json
from panda_edge.memory import check_memory
from panda_edge.model.loading import DTYPES, PROCESS_BYTES, build_on_meta
from panda_edge.model.videopanda import VideoPanda
from panda_edge.prompt import IMAGE_TOKEN_INDEX, PromptTokenizer
from panda_edge.train.data import (
    IGNORE,
    MIRRORS,
    Example,
    build_examples,
    load_frames,
    mirror_conversations,
    mirror_frames,
    read_conversations,
)
from panda_edge.train.distill import DistillationHead, grid_positions, negative_cosine, teacher_grid
from panda_edge.train.recipe import STAGE_NAMES, TINY_RECIPE, Stage

STATE_FILE = "train_state.pt"
LOG_FILE = "train_log.json"


@dataclass
class Progress:
    """What a progress display needs; `train` calls `on_step` after every optimizer step."""

    on_stage: Callable[[Stage, int], None] = lambda stage, total: None
    on_step: Callable[[int, float], None] = lambda step, loss: None
    on_message: Callable[[str], None] = lambda text: None


@dataclass
class TrainResult:
    out_dir: Path
    stages: dict[str, dict[str, float]] = field(default_factory=dict)  # name -> {steps, final_loss, seconds}
    seconds: float = 0.0

    def to_dict(self) -> dict:
        return {"out_dir": str(self.out_dir), "stages": self.stages, "seconds": self.seconds}


class TrainingLoss:
    """The training objective on a batch of examples: next-token cross entropy on the answers, plus the
    distillation loss (eq. 19) when there is a teacher. Builds the padded LLM inputs (text embeddings
    + each frame's visual tokens) on the way.

    While the vision part is frozen (`frozen_vision`), each video's visual tokens are computed once,
    in eval mode, and kept: they are what inference sees, and a step then costs the LLM's alone.
    """

    def __init__(self, model: VideoPanda, frames: Tensor, teacher: nn.Module | None, head: nn.Module | None):
        self.model, self.frames, self.teacher, self.head = model, frames, teacher, head
        self._teacher_cache: dict[int, list[tuple[Tensor, Tensor]]] = {}
        self._visual_cache: dict[int, list[Tensor]] | None = None

    @property
    def frozen_vision(self) -> bool:
        return self._visual_cache is not None

    @frozen_vision.setter
    def frozen_vision(self, frozen: bool) -> None:
        self._visual_cache = {} if frozen else None

    def visual(self, videos: Sequence[int]) -> dict[int, list[Tensor]]:
        """Each video's per-frame visual tokens (LLM width)."""
        if not videos:
            return {}
        n = self.model.config.vision.video_frames
        cache = self._visual_cache
        todo = videos if cache is None else [v for v in videos if v not in cache]
        if todo:
            with torch.set_grad_enabled(cache is None):
                tokens = self.model.encode_frames(self.video_frames(todo).flatten(0, 1))
            found = {v: tokens[i * n : (i + 1) * n] for i, v in enumerate(todo)}
            if cache is None:
                return found
            cache.update(found)
        return {v: cache[v] for v in videos}

    def video_frames(self, videos: Sequence[int]) -> Tensor:
        """Frames of `videos`, indices past the decoded videos naming mirrored copies (data.MIRRORS)."""
        n = self.frames.shape[0]
        if max(videos) < n:
            return self.frames[list(videos)]
        mirrors = list(MIRRORS)
        return torch.stack([mirror_frames(self.frames[v % n], mirrors[v // n]) for v in videos])

    def mean_visual_token(self, videos: Sequence[int], batch: int = 16) -> Tensor:
        """The mean of every visual token of `videos` (frozen vision only)."""
        for i in range(0, len(videos), batch):
            self.visual(videos[i : i + batch])
        return torch.cat([t for v in videos for t in self._visual_cache[v]]).mean(0)

    def centre(self, videos: Sequence[int]) -> Tensor:
        """Subtract the mean visual token of `videos` from the projector's output, by its last bias.

        STAB's tokens share a large constant part (mean token norm ~8.5, a token ~15 in the tiny
        model): a fresh LLM reads motion from the centred tokens and not from the raw ones. Folded into
        the bias, the centring is part of the weights: inference needs nothing else.
        """
        mean = self.mean_visual_token(videos)
        last = self.model.projector
        if isinstance(last, nn.Sequential):
            last = last[-1]
        with torch.no_grad():
            last.bias -= mean
        for tokens in self._visual_cache.values():
            for t in tokens:
                t -= mean
        return mean

    def __call__(self, batch: Sequence[Example], distill: bool = True, reduction: str = "mean") -> Tensor:
        """The loss on `batch`; `reduction` 'sum' gives the answer tokens' summed cross entropy (data
        parallel workers divide by the global count), without the distillation term."""
        model = self.model
        videos = sorted({ex.video for ex in batch if ex.video >= 0})
        visual = self.visual(videos)
        seqs, labels, starts, branches = [], [], [], []
        for ex in batch:
            frame_tokens = visual.get(ex.video, [])
            seqs.append(model.prompt_embeddings(ex.ids, frame_tokens)[0])
            lab, frame_starts, branch = _expand_labels(ex, frame_tokens)
            labels.append(lab)
            starts.append(frame_starts)
            branches.append(branch)
        length = max(s.shape[0] for s in seqs)
        embeds = torch.stack([F.pad(s, (0, 0, 0, length - s.shape[0])) for s in seqs])
        target = torch.stack(
            [F.pad(torch.tensor(lab), (0, length - len(lab)), value=IGNORE) for lab in labels]
        )
        mask, positions = (t.to(embeds.device) for t in branch_attention(branches, length))
        out = model.llm.model(inputs_embeds=embeds, attention_mask=mask, position_ids=positions)
        # Logits only where a label is: most positions are visual or prompt tokens.
        targets = target[:, 1:].to(embeds.device)
        keep = targets != IGNORE
        logits = model.llm.lm_head(out.last_hidden_state[:, :-1][keep])
        loss = F.cross_entropy(logits.float(), targets[keep], reduction=reduction)
        if reduction == "sum":
            return loss
        if distill and self.teacher is not None and videos:
            loss = loss + self._distill(batch, out.last_hidden_state, starts)
        return loss

    def _distill(self, batch: Sequence[Example], hidden: Tensor, starts: list[list[int]]) -> Tensor:
        rows, positions, targets = [], [], []
        for row, ex in enumerate(batch):
            if ex.video < 0:
                continue
            for t, (position, target) in enumerate(self._teacher_tokens(ex.video)):
                positions.append(position + starts[row][t])
                rows.append(torch.full_like(position, row))
                targets.append(target)
        pred = self.head(hidden[torch.cat(rows), torch.cat(positions)])
        return negative_cosine(pred, torch.cat(targets))

    def _teacher_tokens(self, video: int) -> list[tuple[Tensor, Tensor]]:
        """Per frame: the LSD grid's offsets from the frame's first token, and the teacher's tokens there.

        The teacher sees the video once: its tokens are kept for the next epochs.
        """
        if video not in self._teacher_cache:
            stab, s = self.model.stab, self.model.config.vision.conv_stride
            frames = self.video_frames([video])[0]
            with torch.no_grad():
                maps = self.teacher(frames[:, :3])
            out = []
            for t, mask in enumerate(stab.patch_masks(frames)):
                rect = stab.crop_rect(mask)
                h, w = (rect[2] - rect[0] + 1) // s, (rect[3] - rect[1] + 1) // s
                out.append((grid_positions(0, h, w), teacher_grid(maps[t], rect, s)))
            self._teacher_cache[video] = out
        return self._teacher_cache[video]


def _expand_labels(ex: Example, frame_tokens: Sequence[Tensor]) -> tuple[list[int], list[int], list[int]]:
    """Labels and branch ids per embedding row (visual rows: IGNORE, prefix) and where each frame starts."""
    labels, starts, branches, frame = [], [], [], 0
    for token, label, branch in zip(ex.ids, ex.labels, ex.branches or [0] * len(ex.ids), strict=True):
        if token == IMAGE_TOKEN_INDEX:
            starts.append(len(labels))
            labels += [IGNORE] * frame_tokens[frame].shape[0]
            branches += [0] * frame_tokens[frame].shape[0]
            frame += 1
        else:
            labels.append(label)
            branches.append(branch)
    return labels, starts, branches


def branch_attention(branches: Sequence[Sequence[int]], length: int) -> tuple[Tensor, Tensor]:
    """Additive (B, 1, L, L) attention mask and (B, L) positions for rows padded to `length`.

    A row sees earlier rows of the shared prefix (branch 0) and of its own branch; every branch's
    positions start where the prefix ends, as a first question's do. Padding rows see themselves.
    The mask is float (0 or the dtype's min): transformers passes a 4D mask through unchanged, and
    both its eager and its SDPA attention add a float mask.
    """
    masks, positions = [], []
    for branch in branches:
        ids = torch.tensor(list(branch) + [-1] * (length - len(branch)))
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        visible = (ids[None, :] == 0) | (ids[None, :] == ids[:, None])
        masks.append((causal & visible & (ids[None, :] >= 0)) | torch.eye(length, dtype=torch.bool))
        prefix = int((ids == 0).sum())
        pos = torch.arange(length)
        for k in ids.unique().tolist():
            if k > 0:
                rows = (ids == k).nonzero()[:, 0]
                pos[rows] = prefix + torch.arange(len(rows))
        positions.append(pos)
    allowed = torch.stack(masks)[:, None]
    mask = torch.zeros(allowed.shape).masked_fill(~allowed, torch.finfo(torch.float32).min)
    return mask, torch.stack(positions)


def cosine_with_warmup(total: int, warmup_ratio: float) -> Callable[[int], float]:
    warmup = max(1, math.ceil(total * warmup_ratio))

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return 0.5 * (1 + math.cos(math.pi * (step - warmup) / max(1, total - warmup)))

    return factor


def reinitialise(model: VideoPanda, parts: Sequence[str], seed: int) -> None:
    """Give `parts` of the model the weights a model built from `seed` starts with."""
    torch.manual_seed(seed)
    start = VideoPanda(model.config, model.tokenizer)
    for name in parts:
        setattr(model, name, getattr(start, name))


def set_trainable(model: VideoPanda, parts: Sequence[str]) -> list[nn.Parameter]:
    for name in ("stab", "projector", "llm"):
        getattr(model, name).requires_grad_(name in parts)
    return [p for name in parts for p in getattr(model, name).parameters()]


# float32 weight, its gradient and AdamW's two moments: what training every parameter from scratch holds
TRAINING_BYTES_PER_PARAMETER = 16


def check_training_memory(config: ModelConfig) -> None:
    """Exit-2 error before anything is built when training `config` from scratch cannot fit: float32
    weights, gradients and AdamW state for every parameter (activations come on top). The full preset
    needs about 109 GB; `panda finetune` adapts the released weights with LoRA instead."""
    parameters = sum(p.numel() for p in build_on_meta(lambda: VideoPanda(config)).parameters())
    need = parameters * TRAINING_BYTES_PER_PARAMETER + PROCESS_BYTES
    check_memory(
        need,
        f"training the {config.name} preset from scratch ({parameters / 1e9:.2f}B parameters: float32 "
        "weights, gradients and AdamW state, before activations)",
        "to adapt the released weights to your videos, use `panda finetune --checkpoint CKPT --data DIR "
        "--out OUT` (LoRA: the 16-bit base stays frozen)",
    )


def prepare_tokenizer(data_dir: Path, out_dir: Path, vocab_size: int) -> PromptTokenizer:
    from panda_edge.train.tokenizer import train_tokenizer

    target = out_dir / "tokenizer.model"
    if not target.is_file():
        files = [data_dir / name for name in ("train.json", "captions.json") if (data_dir / name).is_file()]
        texts = [
            text
            for file in files
            for conv in read_conversations(file)
            for turn in conv.turns
            for text in turn
        ]
        train_tokenizer(texts, target, vocab_size)
    return PromptTokenizer(target)


def train(
    data_dir: str | Path,
    out_dir: str | Path,
    config: ModelConfig | None = None,
    stages: Sequence[Stage] = TINY_RECIPE,
    seed: int = 0,
    teacher: nn.Module | None = None,
    teacher_width: int | None = None,
    save_every: int = 200,
    progress: Progress | None = None,
    save_dtype: torch.dtype | None = None,
) -> TrainResult:
    """Run `stages` on `data_dir` (train.json + videos/), writing the checkpoint to `out_dir`.

    `save_dtype` stores the checkpoint's weights in another precision (the embedded model ships in
    float16); the resumable state and the training itself stay float32.
    """
    data_dir, out_dir = Path(data_dir), Path(out_dir)
    progress = progress or Progress()
    if not (data_dir / "train.json").is_file():
        raise PandaError(f"{data_dir}: no train.json; make one with `panda toyworld --out {data_dir}`")
    config = config or preset("tiny")
    check_training_memory(config)
    start_time = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(seed)  # before the model is built: its initial weights come from this seed
    model, head = _build_model(data_dir, out_dir, config, teacher_width, teacher is not None)
    data = _read_data(data_dir, model.config, progress)
    if teacher is not None:
        teacher.eval()  # its tokens are computed once per video (TrainingLoss._teacher_tokens)
    run = _Run(out_dir, model, head, TrainingLoss(model, data.frames, teacher, head), progress, save_every)

    state = load_state(out_dir / STATE_FILE)
    done = _resume(state, model, head, progress)
    result = TrainResult(out_dir, stages=state.get("log", {}) if state else {})
    for stage_index, stage in enumerate(stages):
        if stage.name in done:
            continue
        examples = _stage_examples(stage, data, model.tokenizer, model.config.vision.video_frames)
        order = _epoch_order(len(examples), stage, seed + stage_index)
        resumed = state if state and state["stage"] == stage.name else None
        result.stages[stage.name] = _run_stage(
            run, stage, examples, order, resumed, seed, done, result.stages
        )
        done = [*done, stage.name]
        model.save_pretrained(out_dir, dtype=save_dtype)
        _save_state(
            out_dir,
            model,
            head,
            None,
            None,
            stage.name,
            result.stages[stage.name]["steps"],
            done,
            result.stages,
        )
    result.seconds = round(time.perf_counter() - start_time, 1)
    write_json(out_dir / LOG_FILE, result.to_dict())
    return result


@dataclass(frozen=True)
class _Data:
    """The training data: conversations by source, the decoded videos and each video's index."""

    sources: dict[str, list]  # "qa" (train.json), "captions" (captions.json, maybe empty)
    names: list[str]
    frames: Tensor
    index: dict[str, int]


@dataclass(frozen=True)
class _Run:
    """What every stage of one run works on."""

    out_dir: Path
    model: VideoPanda
    head: nn.Module | None
    loss: TrainingLoss
    progress: Progress
    save_every: int


def _build_model(
    data_dir: Path, out_dir: Path, config: ModelConfig, teacher_width: int | None, distil: bool
) -> tuple[VideoPanda, nn.Module | None]:
    """The model to train (the tokenizer trained or reused first: it sets the vocabulary) and, with a
    teacher, the distillation head; both drawn from torch's generator, in this order."""
    tokenizer = prepare_tokenizer(data_dir, out_dir, config.llm.vocab_size)
    config = replace(config, llm=replace(config.llm, vocab_size=tokenizer.vocab_size))
    model = VideoPanda(config, tokenizer)
    head = DistillationHead(config.llm.hidden_size, teacher_width) if distil else None
    return model, head


def _read_data(data_dir: Path, config: ModelConfig, progress: Progress) -> _Data:
    """Conversations and every video they name, decoded once for all stages."""
    sources = {"qa": read_conversations(data_dir / "train.json")}
    captions = data_dir / "captions.json"
    sources["captions"] = read_conversations(captions) if captions.is_file() else []
    names = sorted({c.video for convs in sources.values() for c in convs})
    progress.on_message(f"decoding {len(names)} training videos")
    frames = load_frames(data_dir / "videos", names, config.vision)
    return _Data(sources, names, frames, {name: i for i, name in enumerate(names)})


def _resume(state: dict | None, model: VideoPanda, head: nn.Module | None, progress: Progress) -> list[str]:
    """Load a saved state's weights; returns the stages it finished."""
    if not state:
        return []
    model.load_official_state_dict(state["model"])
    if head is not None and "head" in state:
        head.load_state_dict(state["head"])
    progress.on_message(f"resuming after stages {state['done'] or 'none'} at step {state['step']}")
    return state["done"]


def _stage_examples(
    stage: Stage, data: _Data, tokenizer: PromptTokenizer, frames_per_video: int
) -> list[Example]:
    """The stage's examples: its sources' conversations (train.json's when it names none with data),
    as they are, then each mirrored copy (data.MIRRORS)."""
    conversations = [c for source in stage.data for c in data.sources[source]] or data.sources["qa"]
    examples: list[Example] = []
    for mirror in ("", *stage.mirrors):
        built = build_examples(
            mirror_conversations(conversations, mirror),
            tokenizer,
            data.index,
            frames_per_video,
            stage.packed,
            stage.text_only,
        )
        if mirror:  # a copy's video indices follow the clips' (TrainingLoss.video_frames)
            offset = list(MIRRORS).index(mirror) * len(data.names)
            built = [replace(ex, video=ex.video + offset) for ex in built if ex.video >= 0]
        examples += built
    return examples


def _prepare_stage(
    run: _Run, stage: Stage, examples: list[Example], resuming: bool, seed: int
) -> list[nn.Parameter]:
    """Fresh starts, what trains, train/eval modes and the centred visual tokens; returns the
    parameters to optimize. A resumed stage's weights already hold its fresh start and centring."""
    model, loss = run.model, run.loss
    if stage.fresh and not resuming:
        reinitialise(model, stage.fresh, seed)
    params = set_trainable(model, stage.trainable) + (
        list(run.head.parameters()) if _distils(run, stage) else []
    )
    loss.frozen_vision = not {"stab", "projector"} & set(stage.trainable)
    model.train()
    if loss.frozen_vision:
        model.stab.eval()  # as at inference: no dropout, BatchNorm's running statistics
        model.projector.eval()
        if stage.centre and not resuming:
            videos = sorted({ex.video for ex in examples if ex.video >= 0})
            mean = loss.centre(videos)
            run.progress.on_message(f"centred the visual tokens (mean token norm {float(mean.norm()):.2f})")
    return params


def _distils(run: _Run, stage: Stage) -> bool:
    return run.head is not None and stage.distill


def _run_stage(
    run: _Run,
    stage: Stage,
    examples: list[Example],
    order: list[int],
    resumed: dict | None,
    seed: int,
    done: list[str],
    log: dict[str, dict[str, float]],
) -> dict[str, float]:
    """One stage's optimizer steps (from a saved step when `resumed`), saving the resumable state every
    `save_every` steps; returns its log entry."""
    total = math.ceil(len(order) / stage.batch_size)
    stage_start = time.perf_counter()
    params = _prepare_stage(run, stage, examples, resumed is not None, seed)
    distill = _distils(run, stage)
    optimizer = torch.optim.AdamW(params, lr=stage.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, cosine_with_warmup(total, stage.warmup_ratio))
    first = 0
    if resumed is not None:
        optimizer.load_state_dict(resumed["optimizer"])
        schedule.load_state_dict(resumed["schedule"])
        first = resumed["step"]
        torch.set_rng_state(resumed["rng"])
    run.progress.on_stage(stage, total)
    loss_value = float("nan")
    for step in range(first, total):
        batch = [examples[i] for i in order[step * stage.batch_size : (step + 1) * stage.batch_size]]
        loss = run.loss(batch, distill)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        schedule.step()
        loss_value = float(loss.detach())
        if run.save_every and (step + 1) % run.save_every == 0 and step + 1 < total:
            _save_state(
                run.out_dir, run.model, run.head, optimizer, schedule, stage.name, step + 1, done, log
            )
        run.progress.on_step(step + 1, loss_value)
    run.model.eval()
    return {
        "steps": total,
        "final_loss": round(loss_value, 4),
        "seconds": round(time.perf_counter() - stage_start, 1),
    }


def _epoch_order(n: int, stage: Stage, seed: int) -> list[int]:
    """Shuffled example order for all of a stage's epochs (a fractional last epoch is cut short)."""
    rng = np.random.default_rng(seed)
    whole = math.ceil(stage.epochs)
    order = np.concatenate([rng.permutation(n) for _ in range(whole)])
    return order[: math.ceil(n * stage.epochs)].tolist()


def _save_state(out_dir: Path, model, head, optimizer, schedule, stage: str, step: int, done, log) -> None:
    state = {
        "stage": stage,
        "step": step,
        "done": list(done),
        "log": log,
        "model": model.official_state_dict(),
        "optimizer": optimizer.state_dict() if optimizer else {},
        "schedule": schedule.state_dict() if schedule else {},
        "rng": torch.get_rng_state(),  # dropout draws continue as in an uninterrupted run
    }
    if head is not None:
        state["head"] = head.state_dict()
    with atomic_path(out_dir / STATE_FILE) as tmp:
        torch.save(state, tmp)


TEACHERS = ("none", "toyworld")


def train_recipe(
    data_dir: str | Path,
    out_dir: str | Path,
    preset_name: str = "tiny",
    stage: str | None = None,
    seed: int = 0,
    teacher: str = "none",
    progress: Progress | None = None,
    save_dtype: str = "fp32",
) -> TrainResult:
    """`panda train`: the tiny recipe on `data_dir` for the preset `preset_name`, up to `stage` (None:
    all; the earlier stages must be done in `out_dir`), with the teacher named by `teacher`
    (TEACHERS; 'toyworld' is hand-written from the toy world's rules), the checkpoint stored in
    `save_dtype` (fp32, fp16, bf16)."""
    if teacher not in TEACHERS:
        raise PandaError(f"unknown teacher '{teacher}'; choose one of: {', '.join(TEACHERS)}")
    if save_dtype not in DTYPES:
        raise PandaError(f"unknown --save-dtype '{save_dtype}'; choose one of: {', '.join(DTYPES)}")
    config = preset(preset_name)
    teacher_module = None
    if teacher == "toyworld":
        from panda_edge.train.toy_teacher import ToyWorldTeacher

        teacher_module = ToyWorldTeacher(config.vision.patch)
    stages = TINY_RECIPE
    if stage is not None:
        if stage not in STAGE_NAMES:
            raise PandaError(f"unknown stage '{stage}'; choose one of: {', '.join(STAGE_NAMES)}")
        position = STAGE_NAMES.index(stage)
        state = load_state(Path(out_dir) / STATE_FILE)
        done = state["done"] if state else []
        missing = [s for s in STAGE_NAMES[:position] if s not in done]
        if missing:
            raise PandaError(f"stage {stage} needs stages {', '.join(missing)} first in {out_dir}")
        stages = TINY_RECIPE[: position + 1]
    return train(
        data_dir,
        out_dir,
        config=config,
        stages=stages,
        seed=seed,
        teacher=teacher_module,
        teacher_width=teacher_module.width if teacher_module is not None else None,
        progress=progress,
        save_dtype=DTYPES[save_dtype],
    )


def load_state(path: Path) -> dict | None:
    if not path.is_file():
        return None
    return torch.load(path, map_location="cpu", weights_only=True)
