"""Training on a small real toy world: stages, checkpoints, resume, determinism, distillation."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from torch import nn

from panda_edge.config import preset
from panda_edge.errors import PandaError
from panda_edge.model.videopanda import VideoPanda
from panda_edge.toyworld.writer import generate
from panda_edge.train.data import IGNORE, build_examples, read_conversations
from panda_edge.train.recipe import TINY_RECIPE, Stage
from panda_edge.train.trainer import STATE_FILE, Progress, load_state, train

# Same stages as the real recipe, a fraction of an epoch each: seconds, not minutes.
QUICK = tuple(replace(s, epochs=0.2, batch_size=2) for s in TINY_RECIPE)
# The optional text-only warm-up of the LLM (the tiny recipe does not use it).
WARMUP = Stage("warmup", ("llm",), lr=3e-3, warmup_ratio=0.03, epochs=0.2, batch_size=2, text_only=True)


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("toy")
    generate(out, videos=8, seed=1)
    return out


def _weights(directory: Path) -> dict[str, torch.Tensor]:
    return VideoPanda.from_pretrained(directory).official_state_dict()


def test_examples_label_only_answers(toy: Path, tokenizer_file) -> None:
    from panda_edge.prompt import IMAGE_TOKEN_INDEX, PromptTokenizer

    tok = PromptTokenizer(tokenizer_file)
    conversations = read_conversations(toy / "train.json")
    index = {c.video: i for i, c in enumerate(conversations)}
    single = build_examples(conversations, tok, index, 8)
    packed = build_examples(conversations, tok, index, 8, packed=True)
    assert len(single) == sum(len(c.turns) for c in conversations)
    assert len(packed) == len({c.video for c in conversations})
    for ex in single:
        answer = [i for i, label in zip(ex.ids, ex.labels, strict=True) if label != IGNORE]
        assert answer[-1] == tok.eos_id and ex.ids.count(IMAGE_TOKEN_INDEX) == 8
    text = build_examples(conversations, tok, index, 8, text_only=True)
    assert all(IMAGE_TOKEN_INDEX not in ex.ids and ex.video == -1 for ex in text)


def test_train_writes_a_loadable_checkpoint_and_is_deterministic(toy: Path, tmp_path: Path) -> None:
    stages_seen: list[str] = []
    result = train(
        toy,
        tmp_path / "a",
        stages=QUICK,
        seed=3,
        progress=Progress(on_stage=lambda s, n: stages_seen.append(s.name)),
    )
    assert stages_seen == ["1", "2", "3"]
    assert set(result.stages) == {"1", "2", "3"}
    assert all(v["final_loss"] > 0 for v in result.stages.values())
    train(toy, tmp_path / "b", stages=QUICK, seed=3, save_dtype=torch.float16)
    a = _weights(tmp_path / "a")
    stored = load_file(tmp_path / "b" / "model.safetensors")  # as the embedded model ships: float16
    assert stored.keys() == a.keys()
    assert all(
        v.dtype == torch.float16 for v in stored.values() if v.is_floating_point() or v.dtype.is_complex
    )
    trained = load_state(tmp_path / "b" / STATE_FILE)["model"]  # training itself stays float32
    assert all(torch.equal(a[k], trained[k]) for k in a)  # same seed, same weights
    assert all(torch.equal(a[k].half(), stored[k]) for k in a)


def test_a_bad_save_dtype_is_exit_2(toy: Path, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from panda_edge.cli.main import app

    args = ["train", "--data", str(toy), "--out", str(tmp_path / "o"), "--save-dtype", "fp8"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 2 and "fp32, bf16, fp16" in result.output
    assert not (tmp_path / "o").exists()


def test_stage_one_keeps_the_llm_frozen(toy: Path, tmp_path: Path) -> None:
    train(toy, tmp_path / "w", stages=(WARMUP,), seed=0)
    before = _weights(tmp_path / "w")
    train(toy, tmp_path / "w", stages=(WARMUP, *QUICK[:1]), seed=0)  # resumes: warm-up done, runs stage 1
    after = _weights(tmp_path / "w")
    llm = [k for k in before if not k.startswith(("model.video_tower.", "model.video_projector."))]
    vision = [k for k in before if k.startswith("model.video_projector.")]
    assert all(torch.equal(before[k], after[k]) for k in llm)
    assert any(not torch.equal(before[k], after[k]) for k in vision)
    assert load_state(tmp_path / "w" / STATE_FILE)["done"] == ["warmup", "1"]


class _Stop(Exception):
    pass


def _cut_at_step_two_and_resume(
    toy: Path, out: Path, stages: tuple[Stage, ...], seed: int, stage: str
) -> None:
    """Train `stages` into `out`, interrupted after step 2 of `stage` (a state saved there), then resume."""
    current = {}

    def stop(step: int, loss: float) -> None:
        if current["stage"] == stage and step == 2:
            raise _Stop

    progress = Progress(on_stage=lambda s, n: current.update(stage=s.name), on_step=stop)
    with pytest.raises(_Stop):
        train(toy, out, stages=stages, seed=seed, save_every=2, progress=progress)
    state = load_state(out / STATE_FILE)
    assert (state["stage"], state["step"]) == (stage, 2)
    train(toy, out, stages=stages, seed=seed)


def test_resume_mid_stage_matches_an_uninterrupted_run(toy: Path, tmp_path: Path) -> None:
    stages = (replace(QUICK[0], epochs=1.0),)
    train(toy, tmp_path / "full", stages=stages, seed=5)
    _cut_at_step_two_and_resume(toy, tmp_path / "cut", stages, seed=5, stage="1")
    a, b = _weights(tmp_path / "full"), _weights(tmp_path / "cut")
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)


def test_the_fresh_llm_stage_centres_the_frozen_vision_and_resumes(toy: Path, tmp_path: Path) -> None:
    """Stage 3 starts the LLM again from its initial weights on the frozen vision part, whose mean
    visual token over the training videos it folds into the projector's last bias (then ~0); the
    vision part is unchanged otherwise, and a run cut mid-stage resumes to the same weights."""
    from panda_edge.train.data import load_frames
    from panda_edge.train.trainer import TrainingLoss

    stages = (QUICK[1], replace(QUICK[2], epochs=1.0))
    train(toy, tmp_path / "two", stages=stages[:1], seed=4)
    train(toy, tmp_path / "full", stages=stages, seed=4)
    before, after = _weights(tmp_path / "two"), _weights(tmp_path / "full")
    bias = "model.video_projector.2.bias"
    vision = [k for k in before if k.startswith(("model.video_tower.", "model.video_projector."))]
    assert all(torch.equal(before[k], after[k]) for k in vision if k != bias)
    assert not torch.equal(before[bias], after[bias])
    llm = [k for k in before if k not in vision]
    assert all(not torch.equal(before[k], after[k]) for k in llm if k.endswith("q_proj.weight"))

    model = VideoPanda.from_pretrained(tmp_path / "full")
    names = sorted({c.video for c in read_conversations(toy / "train.json")})
    batches = TrainingLoss(model, load_frames(toy / "videos", names, model.config.vision), None, None)
    batches.frozen_vision = True
    mean = batches.mean_visual_token(list(range(4 * len(names))))  # the clips and their 3 mirrored copies
    assert float(mean.abs().max()) < 1e-4 * float(before[bias].abs().max() + 1)

    _cut_at_step_two_and_resume(toy, tmp_path / "cut", stages, seed=4, stage="3")
    cut = _weights(tmp_path / "cut")
    assert all(torch.allclose(after[k], cut[k], atol=1e-6) for k in after)


def test_the_fresh_stage_starts_the_llm_from_the_seeds_initial_weights(toy: Path, tmp_path: Path) -> None:
    """With a zero learning rate, stage 3 leaves the LLM exactly where `fresh` put it: the weights a
    model built from the seed starts with, not stage 2's."""
    stages = (QUICK[1], replace(QUICK[2], lr=0.0))
    train(toy, tmp_path / "two", stages=stages[:1], seed=4)
    train(toy, tmp_path / "fresh", stages=stages, seed=4)
    trained, fresh = _weights(tmp_path / "two"), _weights(tmp_path / "fresh")
    model = VideoPanda.from_pretrained(tmp_path / "fresh")
    torch.manual_seed(4)
    initial = VideoPanda(model.config, model.tokenizer).official_state_dict()
    llm = [k for k in initial if not k.startswith(("model.video_tower.", "model.video_projector."))]
    assert llm and all(torch.equal(fresh[k], initial[k]) for k in llm)
    assert any(not torch.equal(trained[k], initial[k]) for k in llm)


def test_mirrored_copies_flip_the_frames_and_swap_the_direction_words(toy: Path, tmp_path: Path) -> None:
    from panda_edge.train.data import load_frames, mirror_conversations
    from panda_edge.train.trainer import TrainingLoss

    swap = {"left": "right", "right": "left", "up": "down", "down": "up"}
    conversations = read_conversations(toy / "train.json")
    turns = [t for c in conversations for t in c.turns]
    mirrored = [t for c in mirror_conversations(conversations, "hv") for t in c.turns]
    assert any(a in swap for _, a in turns)
    assert mirrored == [(q, swap.get(a, a)) for q, a in turns]  # "Which direction does the red ring move?"
    captions = mirror_conversations(read_conversations(toy / "captions.json"), "h")
    assert any("moves right" in c.turns[0][1] for c in captions)

    names = sorted({c.video for c in conversations})
    n = len(names)
    frames = load_frames(toy / "videos", names, preset("tiny").vision)
    batches = TrainingLoss(None, frames, None, None)
    expected = torch.stack([frames[1], frames[1].flip(-1), frames[1].flip(-2, -1)])
    assert torch.equal(batches.video_frames([1, n + 1, 3 * n + 1]), expected)

    steps = {}

    def count(stage: Stage, total: int) -> None:
        steps[stage.name] = total

    mirrored_stage = replace(QUICK[1], name="m", mirrors=("h", "v", "hv"))
    train(toy, tmp_path / "m", stages=(QUICK[1], mirrored_stage), seed=0, progress=Progress(on_stage=count))
    assert steps["m"] >= 4 * steps["2"] - 3  # the same examples four times, each with its own batches


class PatchColourTeacher(nn.Module):
    """A fixed teacher: mean colour of each 14x14 patch (any module giving patch features works)."""

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        return nn.functional.avg_pool2d(pixels, 14)


def test_distillation_adds_the_negative_cosine_term(toy: Path, tmp_path: Path) -> None:
    stages = (replace(QUICK[1], epochs=0.25),)
    plain = train(toy, tmp_path / "plain", stages=stages, seed=2)
    taught = train(
        toy, tmp_path / "taught", stages=stages, seed=2, teacher=PatchColourTeacher(), teacher_width=3
    )
    # eq. 19 is a negative cosine in [-1, 1]: it moves the loss, and the weights, away from the plain run.
    assert plain.stages["2"]["final_loss"] != taught.stages["2"]["final_loss"]
    a, b = _weights(tmp_path / "plain"), _weights(tmp_path / "taught")
    assert any(not torch.equal(a[k], b[k]) for k in a if k.startswith("model.video_tower."))


def test_missing_data_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(PandaError, match="panda toyworld"):
        train(tmp_path, tmp_path / "out", stages=QUICK)


def test_packed_branches_see_only_the_prefix_and_themselves(toy: Path, tokenizer_file) -> None:
    """A video packed as branches gives each answer the loss it has asked alone after the prefix."""
    from tests.conftest import random_tiny_model

    from panda_edge.train.data import load_frames
    from panda_edge.train.trainer import TrainingLoss

    model = random_tiny_model(tokenizer_file)
    tok = model.tokenizer
    conversations = read_conversations(toy / "train.json")
    names = sorted({c.video for c in conversations})[:2]
    index = {name: i for i, name in enumerate(names)}
    chosen = [c for c in conversations if c.video in index]
    frames = load_frames(toy / "videos", names, model.config.vision)
    training_loss = TrainingLoss(model, frames, None, None)

    def summed(examples) -> float:
        answers = sum(sum(label != IGNORE for label in ex.labels) for ex in examples)
        with torch.no_grad():
            return float(training_loss(examples)) * answers

    single = build_examples(chosen, tok, index, 8)
    packed = build_examples(chosen, tok, index, 8, packed=True)
    assert len(packed) == 2 and len(single) > 2
    assert summed(packed) == pytest.approx(summed(single), rel=1e-4)
    # The same rows without the branch mask see each other: the answers change.
    sequential = [replace(ex, branches=None) for ex in packed]
    assert summed(sequential) != pytest.approx(summed(single), rel=1e-3)


def test_the_full_preset_is_refused_before_anything_is_built(toy: Path, tmp_path: Path, monkeypatch) -> None:
    """From scratch the 7B needs ~109 GB (weights, gradients, AdamW): one line pointing to finetune,
    exit 2, and nothing written; before the check the kernel killed the process."""
    from typer.testing import CliRunner

    from panda_edge.cli.main import app
    from panda_edge.memory import BUDGET_ENV

    monkeypatch.setenv(BUDGET_ENV, "1")  # at most 1 GB counted free, whatever this machine has
    out = tmp_path / "full"
    result = CliRunner().invoke(app, ["train", "--preset", "full", "--data", str(toy), "--out", str(out)])
    assert result.exit_code == 2
    message = result.output.strip()
    assert len(message.splitlines()) == 1 and "Traceback" not in message
    assert "needs about 109" in message and "1.0 GB is available" in message
    assert "panda finetune" in message
    assert not out.exists()
