"""panda finetune: LoRA wrapping and merging, the memory check, and the proof on the embedded tiny
model: a toy world whose motion questions are answered with the opposite direction (a rule the
tiny model never saw) is learned from its training split and scored on its held-out split."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from panda_edge.cli.main import app
from panda_edge.optional import has_llama_cpp
from panda_edge.train import lora
from panda_edge.train.finetune import FinetuneJob, FinetuneSpec

runner = CliRunner()
# The changed world: 240 videos, 40% held out (96 videos: 24 motion questions, 284 in all).
WORLD = ["--videos", "240", "--seed", "5", "--heldout", "0.4", "--rule", "reversed-motion"]
# Measured on it: loss 1.22 -> 0.005 in 216 steps, held-out motion 0% -> 100%. One thread: two wait on
# each other when another process is busy (as on a shared CI machine).
RECIPE = ["--lr", "5e-3", "--epochs", "6", "--rank", "8", "--batch-size", "4", "--threads", "1"]


def _invoke(args: list[str], **kwargs):
    result = runner.invoke(app, args, **kwargs)
    assert result.exit_code == 0, result.output
    return result


@pytest.fixture(scope="module")
def changed_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("changed") / "world"
    _invoke(["-q", "toyworld", "--out", str(out), *WORLD, "--json", str(out.parent / "world.json")])
    return out


@pytest.fixture(scope="module")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("small") / "world"
    _invoke(
        ["-q", "toyworld", "--out", str(out), "--videos", "8", "--seed", "1", "--rule", "reversed-motion"]
    )
    return out


def _accuracy(world: Path, checkpoint: str | Path, extra: list[str] = ()) -> dict:
    result = _invoke(
        [
            "eval",
            "--qa",
            str(world / "heldout.json"),
            "--videos",
            str(world / "videos"),
            "--checkpoint",
            str(checkpoint),
            "--threads",
            "1",
            *extra,
            "--json",
            "-",
        ]
    )
    return json.loads(result.stdout)


def test_the_rule_changes_only_its_question_type(small_world: Path) -> None:
    entries = json.loads((small_world / "train.json").read_text())
    motion = [e for e in entries if e["type"] == "motion"]
    assert motion and {e["answer"] for e in motion} <= {"left", "right", "up", "down"}
    captions = json.loads((small_world / "captions.json").read_text())
    # the caption still tells the true direction; the motion answer is its opposite
    opposite = {"left": "right", "right": "left", "up": "down", "down": "up"}
    for entry in motion:
        caption = next(c["answer"] for c in captions if c["video"] == entry["video"])
        shape = entry["question"].removeprefix("Which direction does the ").removesuffix(" move?")
        clause = next(c for c in caption.rstrip(".").split(", ") if c.startswith(shape))
        assert clause.endswith(f"moves {opposite[entry['answer']]}")
        assert entry["conversations"][-1]["value"] == entry["answer"]
    assert json.loads((small_world / "toyworld.json").read_text())["rule"] == "reversed-motion"


def test_lora_starts_as_the_base_and_merges_exactly(tiny_model) -> None:
    llm = tiny_model.llm
    ids = torch.randint(3, 500, (1, 12))
    with torch.no_grad():
        base = llm(input_ids=ids).logits
    import copy

    model = copy.deepcopy(llm)
    assert lora.wrap(model, rank=4, alpha=8.0) == 7 * len(model.model.layers)
    assert all(not p.requires_grad for n, p in model.named_parameters() if "lora_" not in n)
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, base)  # B starts at zero
        for module in lora.wrapped(model).values():
            module.lora_B.normal_(0, 0.05)
        tuned = model(input_ids=ids).logits
        assert (tuned - base).abs().max() > 1e-3
        state = lora.adapter_state_dict(model)
        lora.merge(model)
        assert not lora.wrapped(model)
        assert set(model.state_dict()) == set(llm.state_dict())  # the released names again
        torch.testing.assert_close(model(input_ids=ids).logits, tuned, rtol=1e-4, atol=1e-4)
    name = "base_model.model.model.layers.0.self_attn.q_proj.lora_A.weight"
    assert state[name].shape == (4, llm.config.hidden_size)
    assert state[name.replace("lora_A", "lora_B")].shape == (llm.config.hidden_size, 4)


def test_gradient_checkpointing_gives_the_same_gradients(small_world: Path) -> None:
    grads = []
    for checkpointing in (False, True):
        spec = FinetuneSpec("tiny", str(small_world), batch_size=2, checkpointing=checkpointing)
        job = FinetuneJob(spec)
        for module in lora.wrapped(job.model.llm).values():  # B = 0 would leave A without a gradient
            with torch.no_grad():
                module.lora_B.normal_(0, 0.05, generator=torch.Generator().manual_seed(0))
        assert job.model.llm.is_activation_checkpointing == checkpointing
        job.loss(job.examples[:2]).backward()
        grads.append(torch.cat([p.grad.flatten() for p in job.params]))
    assert grads[0].abs().max() > 0
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-6)


def test_not_enough_memory_is_one_line_with_the_need_and_what_helps(small_world: Path, tmp_path) -> None:
    from panda_edge.memory import BUDGET_ENV

    out = tmp_path / "out"
    args = ["finetune", "--checkpoint", "tiny", "--data", str(small_world), "--out", str(out)]
    result = runner.invoke(app, [*args, "--method", "full"], env={BUDGET_ENV: "0.05"})
    assert result.exit_code == 2
    line = result.output.strip()
    assert len(line.splitlines()) == 1 and "needs about" in line and "--method lora" in line
    assert not out.exists()


def test_projector_method_trains_the_projector_alone(small_world: Path, tmp_path: Path) -> None:
    from panda_edge.assets import tiny_checkpoint

    out = tmp_path / "proj"
    _invoke(
        [
            "-q",
            "finetune",
            "--checkpoint",
            "tiny",
            "--data",
            str(small_world),
            "--out",
            str(out),
            "--method",
            "projector",
            "--lr",
            "1e-2",
            "--epochs",
            "2",
            "--threads",
            "1",
        ]
    )
    base, tuned = load_file(tiny_checkpoint() / "model.safetensors"), load_file(out / "model.safetensors")
    assert set(base) == set(tuned) and not (out / "adapter").exists()
    changed = {k for k in base if not torch.equal(base[k], tuned[k])}
    assert changed and all(k.startswith("model.video_projector.") for k in changed)
    assert all(tuned[k].dtype == base[k].dtype for k in base)  # stored as the base was (float16)


@pytest.fixture(scope="module")
def tuned(changed_world: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    """The tiny model LoRA-tuned on the changed world's training split, and `panda finetune --json`."""
    out = tmp_path_factory.mktemp("tuned") / "out"
    data = ["--checkpoint", "tiny", "--data", str(changed_world), "--out", str(out)]
    result = _invoke(["finetune", *data, *RECIPE, "--json", "-"])
    return out, json.loads(result.stdout)


def test_finetuning_learns_the_changed_rule_and_keeps_the_others(changed_world: Path, tuned) -> None:
    """Before: the tiny model answers the true direction (0% under the rule); after LoRA on the
    training split: >= 90% on held-out motion questions, every other type within 5 points."""
    out, report = tuned
    before = _accuracy(changed_world, "tiny")
    assert report["method"] == "lora" and len(report["losses"]) == report["steps"] > 100
    assert report["final_loss"] < 0.2 * report["first_loss"]
    after = _accuracy(changed_world, out)
    print("before", before["per_type"], "after", after["per_type"])
    assert before["per_type"]["motion"] <= 0.1
    assert after["per_type"]["motion"] >= 0.9
    for qtype, accuracy in before["per_type"].items():
        if qtype != "motion":
            assert after["per_type"][qtype] >= accuracy - 0.05, qtype
    # the adapter alone: PEFT's layout, the base's sha256, A and B for 7 projections x 2 layers
    config = json.loads((out / "adapter" / lora.ADAPTER_CONFIG).read_text())
    assert config["r"] == 8 and config["lora_alpha"] == 16.0 and config["peft_type"] == "LORA"
    assert set(config["target_modules"]) == set(lora.TARGETS) and len(config["base_checkpoint_sha256"]) == 64
    tensors = load_file(out / "adapter" / lora.ADAPTER_WEIGHTS)
    assert len(tensors) == 2 * 7 * 2


def test_the_lora_gguf_has_llama_cpps_names_and_shapes(tuned, tmp_path: Path) -> None:
    import gguf

    from panda_edge.config import PRESETS
    from panda_edge.export.llm_gguf.lora_gguf import write_lora_gguf

    out, _ = tuned
    path = write_lora_gguf(out / "adapter", tmp_path / "lora.gguf", PRESETS["tiny"].llm)
    reader = gguf.GGUFReader(tmp_path / "lora.gguf")

    def text(key: str) -> str:
        field = reader.fields[key]
        return bytes(field.parts[field.data[0]]).decode()

    assert path["tensors"] == 28 and text("general.type") == "adapter" and text("adapter.type") == "lora"
    assert text("general.architecture") == "llama"
    assert float(reader.fields["adapter.lora.alpha"].parts[-1][0]) == 16.0
    shapes = {t.name: tuple(int(d) for d in t.shape) for t in reader.tensors}  # ggml order: ne0 first
    assert shapes["blk.0.attn_q.weight.lora_a"] == (128, 8)  # A: (rank, in) -> ne [in, rank]
    assert shapes["blk.0.attn_q.weight.lora_b"] == (8, 128)  # B: (out, rank) -> ne [rank, out]
    assert shapes["blk.1.ffn_down.weight.lora_a"] == (256, 8)
    assert shapes["blk.1.ffn_gate.weight.lora_b"] == (8, 256)


@pytest.mark.skipif(not has_llama_cpp(), reason="llama-cpp-python is not installed")
def test_exported_bundles_keep_the_finetuned_accuracy(changed_world: Path, tuned, tmp_path: Path) -> None:
    """INT8 vision + q8_0: the merged checkpoint's bundle, and the base's bundle with the LoRA GGUF
    applied at load, each within 1 point of the fine-tuned PyTorch reference on the held-out set."""
    out, _ = tuned
    calibration = ["--qa", str(changed_world / "train.json"), "--videos", str(changed_world / "videos")]
    common = ["--target", "all", "--gguf-type", "q8_0", "--precision", "int8", *calibration]
    merged, base = tmp_path / "merged", tmp_path / "base"
    _invoke(["-q", "export", "--checkpoint", str(out), "--out", str(merged), *common])
    exported = _invoke(
        ["export", "--checkpoint", "tiny", "--out", str(base), *common, "--lora", str(out / "adapter")]
    )
    assert "lora.gguf" in exported.output
    # the adapter's base is the tiny model: exporting it onto the merged checkpoint is refused
    refused = runner.invoke(
        app,
        [
            "export",
            "--checkpoint",
            str(out),
            "--out",
            str(tmp_path / "x"),
            "--target",
            "gguf",
            "--lora",
            str(out / "adapter"),
        ],
    )
    assert refused.exit_code == 2 and "trained on other weights" in refused.output
    assert not (tmp_path / "x").exists()  # refused before anything is written
    runs = {
        "merged": [str(merged)],
        "base+lora": [str(base), "--lora", str(base / "lora.gguf")],
    }
    for name, bundle in runs.items():
        report = _accuracy(
            changed_world, out, ["--bundle", *bundle, "--gguf-type", "q8_0", "--precision", "int8"]
        )
        print(
            name,
            "reference",
            report["accuracy"],
            "runtime",
            report["runtime"]["accuracy"],
            report["runtime"]["per_type"],
        )
        assert report["per_type"]["motion"] >= 0.9
        assert abs(report["runtime"]["accuracy"] - report["accuracy"]) <= 0.01, name
        assert ("lora" in report) == (name == "base+lora")  # eval names the adapter it applied


def test_an_interrupted_run_resumes_from_its_saved_state(small_world: Path, tmp_path: Path) -> None:
    from panda_edge.train.finetune import Progress, finetune

    torch.set_num_threads(1)
    spec = FinetuneSpec("tiny", str(small_world), lr=5e-3, epochs=3, batch_size=2)
    whole = finetune(spec, tmp_path / "whole", save_every=2)

    class Stop(Exception):
        pass

    def stop_at_five(step: int, loss: float) -> None:
        if step == 5:
            raise Stop

    with pytest.raises(Stop):
        finetune(spec, tmp_path / "cut", Progress(on_step=stop_at_five), save_every=2)
    resumed = finetune(spec, tmp_path / "cut", save_every=2)
    assert resumed.resumed_at == [4] and len(resumed.step_seconds) == whole.steps - 4
    assert resumed.losses == pytest.approx(whole.losses, abs=1e-4)
    assert not (tmp_path / "cut" / "finetune_state.pt").exists()  # done: nothing left to resume
    a = load_file(tmp_path / "whole" / "adapter" / lora.ADAPTER_WEIGHTS)
    b = load_file(tmp_path / "cut" / "adapter" / lora.ADAPTER_WEIGHTS)
    assert all(torch.allclose(a[k], b[k], atol=1e-5) for k in a)


def test_a_saved_state_is_resumed_only_with_the_options_it_was_saved_under(
    small_world: Path, tmp_path: Path
) -> None:
    """A changed --rank would not load, a changed --epochs or --data would go on silently: refused
    (exit 2, one line) with the fields that differ; the same options resume."""
    from panda_edge.train.finetune import STATE_FILE, Progress, finetune

    torch.set_num_threads(1)
    out = tmp_path / "cut"
    spec = FinetuneSpec("tiny", str(small_world), lr=5e-3, epochs=2, batch_size=2, rank=4)

    class Stop(Exception):
        pass

    def stop_at_two(step: int, loss: float) -> None:
        if step == 2:
            raise Stop

    with pytest.raises(Stop):
        finetune(spec, out, Progress(on_step=stop_at_two), save_every=2)
    assert (out / STATE_FILE).is_file()
    base = [
        "finetune",
        "--checkpoint",
        "tiny",
        "--data",
        str(small_world),
        "--out",
        str(out),
        "--threads",
        "1",
    ]
    same = ["--lr", "5e-3", "--epochs", "2", "--batch-size", "2", "--rank", "4", "--save-every", "2"]
    for changed, field_name in ((["--rank", "8"], "rank"), (["--epochs", "3"], "epochs")):
        args = [*same]
        args[args.index(changed[0]) + 1] = changed[1]
        result = runner.invoke(app, [*base, *args])
        assert result.exit_code == 2, result.output
        assert f"{field_name} " in result.output and "use a new --out" in result.output
        assert len(result.output.strip().splitlines()) == 1
    resumed = finetune(spec, out, save_every=2)  # the same options: resumed
    assert resumed.resumed_at == [2]


def test_a_qa_file_in_the_msvd_form_trains_too(small_world: Path, tmp_path: Path) -> None:
    """`--data QA.json --videos DIR` with flat video_id/question/answer entries (ids without their
    extension), as panda eval reads them: the same examples as the Video-ChatGPT form of those turns."""
    entries = json.loads((small_world / "train.json").read_text())
    flat = [
        {
            "video_id": e["video"].removesuffix(".mp4"),
            "question": e["question"],
            "answer": e["answer"],
            "question_id": i,
        }
        for i, e in enumerate(entries)
    ]
    qa = tmp_path / "qa.json"
    qa.write_text(json.dumps(flat))
    job = FinetuneJob(FinetuneSpec("tiny", str(qa), videos_dir=str(small_world / "videos")))
    reference = FinetuneJob(FinetuneSpec("tiny", str(small_world)))
    assert [(e.video, e.ids, e.labels) for e in job.examples] == [
        (e.video, e.ids, e.labels) for e in reference.examples
    ]
    missing = runner.invoke(
        app, ["finetune", "--checkpoint", "tiny", "--data", str(qa), "--out", str(tmp_path / "o")]
    )
    assert missing.exit_code == 2 and "no such videos directory" in missing.output


@pytest.mark.skipif(not has_llama_cpp(), reason="llama-cpp-python is not installed")
def test_llama_cpp_with_the_lora_gguf_gives_the_merged_models_logits(tuned, tmp_path: Path) -> None:
    """f32 base GGUF + lora.gguf in llama.cpp against transformers on the merged checkpoint, on the
    same tokens: top-1 equal everywhere and the logits close (a wrong q/k permutation of B, a missing
    alpha / rank or transposed A/B would not be); without the adapter they are far apart."""
    import numpy as np

    from panda_edge.model.videopanda import load_llm_reference
    from panda_edge.runtime.llm.llamacpp import load_llama

    out, _ = tuned
    bundle = tmp_path / "b"
    args = ["-q", "export", "--target", "gguf", "--gguf-type", "f32", "--checkpoint", "tiny"]
    _invoke([*args, "--out", str(bundle), "--lora", str(out / "adapter")])
    ids = [1, *torch.randint(3, 500, (47,), generator=torch.Generator().manual_seed(0)).tolist()]
    with torch.no_grad():
        reference = load_llm_reference(out)(input_ids=torch.tensor([ids])).logits[0].numpy()

    def llama_cpp_logits(lora: Path | None) -> np.ndarray:
        llm = load_llama(bundle / "llm.f32.gguf", 64, 64, 1, kv_cache="f32", logits_all=True, lora=lora)
        try:
            llm.eval(ids)
            return np.array(llm.scores[: len(ids)], dtype=np.float32)
        finally:
            llm.close()

    adapted, plain = llama_cpp_logits(bundle / "lora.gguf"), llama_cpp_logits(None)
    scale = np.abs(reference).max()
    with_lora, without = np.abs(adapted - reference).max(), np.abs(plain - reference).max()
    print(f"max abs diff with the LoRA GGUF {with_lora:.4f}, without {without:.4f} (of {scale:.2f})")
    assert (adapted.argmax(-1) == reference.argmax(-1)).all()
    assert with_lora <= 0.01 * scale and without >= 10 * with_lora

    # a live window's second context on the same weights carries the adapter too
    from panda_edge.runtime.llm.decoder import LlamaDecoder

    with LlamaDecoder(bundle / "llm.f32.gguf", 64, 64, 1, kv_cache="f32", lora=bundle / "lora.gguf") as first:
        first.feed_tokens(ids)
        second = first.sibling()
        try:
            second.feed_tokens(ids)
            np.testing.assert_array_equal(second.logits(), first.logits())
            np.testing.assert_allclose(first.logits(), adapted[-1], atol=1e-3)
        finally:
            second.close()


def test_lora_is_a_runtime_option_of_run_chat_serve_watch_and_eval(tmp_path: Path) -> None:
    from panda_edge.errors import PandaError
    from panda_edge.runtime.options import RuntimeOptions

    for command in ("run", "chat", "serve", "watch", "eval"):
        assert "--lora" in runner.invoke(app, [command, "--help"], env={"COLUMNS": "200"}).output, command
    with pytest.raises(PandaError, match="no such file"):
        RuntimeOptions(lora=str(tmp_path / "missing.gguf"))
    (tmp_path / "qa.json").write_text("[]")
    (tmp_path / "l.gguf").write_bytes(b"")
    args = ["eval", "--qa", str(tmp_path / "qa.json"), "--videos", str(tmp_path)]
    result = runner.invoke(app, [*args, "--lora", str(tmp_path / "l.gguf")])
    assert result.exit_code == 2 and "give --bundle" in result.output
    assert len(result.output.strip().splitlines()) == 1


def test_a_lora_gguf_is_refused_on_a_bundle_of_other_weights(
    tuned, tiny_bundle: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The base's adapter on the merged checkpoint's bundle would add the update twice: `panda run`
    refuses it (exit 2, one line) before llama.cpp loads; on the base's bundle it is taken; a GGUF
    that is not a LoRA adapter is refused, one without the base digest is taken with a warning."""
    import gguf

    from panda_edge.bundle import LORA_BASE_KEY
    from panda_edge.config import PRESETS
    from panda_edge.errors import PandaError
    from panda_edge.export.llm_gguf.export_gguf import export_gguf
    from panda_edge.export.llm_gguf.lora_gguf import write_lora_gguf
    from panda_edge.export.stab_onnx.export_onnx import export_bundle
    from panda_edge.runtime.options import RuntimeOptions

    out, _ = tuned
    lora_gguf = tmp_path / "lora.gguf"
    write_lora_gguf(out / "adapter", lora_gguf, PRESETS["tiny"].llm)
    fields = gguf.GGUFReader(lora_gguf).fields
    base = bytes(fields[LORA_BASE_KEY].parts[fields[LORA_BASE_KEY].data[0]]).decode()
    assert base == json.loads((out / "adapter" / lora.ADAPTER_CONFIG).read_text())["base_checkpoint_sha256"]

    merged = tmp_path / "merged"
    export_bundle(str(out), merged)
    export_gguf(str(out), merged, "q8_0")
    video = tmp_path / "clip.mp4"  # never read: the refusal comes first
    result = runner.invoke(
        app, ["run", "--bundle", str(merged), "--lora", str(lora_gguf), str(video), "what?"]
    )
    assert result.exit_code == 2, result.output
    assert "trained on other weights" in result.output and base[:12] in result.output
    assert len(result.output.strip().splitlines()) == 1

    assert RuntimeOptions(lora=str(lora_gguf)).check(tiny_bundle).root == tiny_bundle  # its base: taken
    if has_llama_cpp():  # and named in what the runtime reports (run --json, serve's start line)
        from panda_edge.bundle import sha256_file

        with RuntimeOptions(lora=str(lora_gguf), threads=1).open(tiny_bundle) as runtime:
            info = runtime.describe()
        named = f"lora.gguf (sha256 {sha256_file(lora_gguf)[:12]})"
        assert info["lora"] == named and info["decoder"].endswith(f" + LoRA {named}")
    with pytest.raises(PandaError, match="not a LoRA adapter"):
        RuntimeOptions(lora=str(merged / "llm.q8_0.gguf")).check(tiny_bundle)
    # an adapter from elsewhere (no base digest): the GGUF cannot be checked, taken with a warning
    import shutil

    shutil.copytree(out / "adapter", tmp_path / "peft")
    config = json.loads((tmp_path / "peft" / lora.ADAPTER_CONFIG).read_text())
    del config["base_checkpoint_sha256"]
    (tmp_path / "peft" / lora.ADAPTER_CONFIG).write_text(json.dumps(config))
    write_lora_gguf(tmp_path / "peft", tmp_path / "plain.gguf", PRESETS["tiny"].llm)
    assert LORA_BASE_KEY not in gguf.GGUFReader(tmp_path / "plain.gguf").fields
    with caplog.at_level(logging.WARNING):
        RuntimeOptions(lora=str(tmp_path / "plain.gguf")).check(merged)
    assert "could not be checked" in caplog.text
    (tmp_path / "empty.gguf").write_bytes(b"")
    with pytest.raises(PandaError, match="not a GGUF file"):
        RuntimeOptions(lora=str(tmp_path / "empty.gguf")).check(tiny_bundle)
