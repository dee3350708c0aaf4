"""The device runtime (ONNX Runtime vision + llama.cpp) against the PyTorch reference, as users run it."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from panda_edge.cli.main import app
from panda_edge.export.llm_gguf.export_gguf import export_gguf
from panda_edge.export.stab_onnx.export_onnx import export_bundle
from panda_edge.optional import has_llama_cpp
from panda_edge.parity.task import read_questions

pytestmark = pytest.mark.skipif(
    not has_llama_cpp(), reason="llama-cpp-python is not installed (pip install 'panda-edge[llama]')"
)
runner = CliRunner()


@pytest.fixture(scope="module")
def bundle(f32_bundle: Path) -> Path:
    return f32_bundle


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from panda_edge.toyworld.writer import generate

    directory = tmp_path_factory.mktemp("toy")
    generate(directory, videos=10, seed=3, heldout_fraction=0.5)
    return directory


@pytest.fixture(scope="module")
def reference():
    from panda_edge.model.videopanda import VideoPanda

    return VideoPanda.from_pretrained("tiny")


@pytest.fixture(scope="module")
def runtime(bundle: Path):
    from panda_edge.runtime.options import RuntimeOptions

    with RuntimeOptions(gguf_type="f32", kv_type="f32", n_batch=32).open(bundle) as rt:
        yield rt


# --- the decoder ----------------------------------------------------------------------------------


def test_embeddings_in_slices_give_the_token_path_logits(bundle: Path, reference, tmp_path: Path) -> None:
    from panda_edge.runtime.llm.decoder import ContextFull, LlamaDecoder

    ids = reference.tokenizer.encode("Which direction does the red square move? It moves left.", bos=True)
    rows = reference.llm.get_input_embeddings().weight.detach().numpy()[ids]
    with LlamaDecoder(bundle / "llm.f32.gguf", n_ctx=64, n_batch=4, kv_cache="f32") as decoder:
        decoder.feed_tokens(ids)
        from_tokens = decoder.logits().copy()
        n_past, state_file = decoder.n_past, tmp_path / "prefix.kv"
        assert decoder.save_state_file(state_file) == state_file.stat().st_size > 0
        decoder.truncate(0)
        decoder.feed_embeddings(rows)  # len(ids) > n_batch: several llama_decode calls
        assert decoder.n_past == len(ids)
        np.testing.assert_allclose(decoder.logits(), from_tokens, atol=1e-4)
        decoder.feed_tokens([5, 6])
        after = decoder.logits().copy()
        assert decoder.load_state_file(state_file, n_past) and decoder.n_past == n_past
        decoder.feed_tokens([5, 6])
        np.testing.assert_array_equal(decoder.logits(), after)
        decoder.truncate(n_past)  # as the prefix cache saves it: with a turn after the prefix, cut back
        decoder.feed_tokens([7])
        decoder.save_state_file(state_file)
        assert decoder.load_state_file(state_file, n_past + 1)
        decoder.truncate(n_past)
        decoder.feed_tokens([5, 6])
        np.testing.assert_array_equal(decoder.logits(), after)
        state_file.write_bytes(b"not a state")
        assert not decoder.load_state_file(state_file, n_past) and decoder.n_past == 0
        with pytest.raises(ContextFull, match=f"do not fit the context of {decoder.n_ctx}"):
            decoder.feed_tokens([5] * (decoder.n_ctx + 1))


# --- answers: the runtime against the reference ------------------------------------------------------


def test_greedy_answers_are_the_references_token_for_token(runtime, reference, toy: Path) -> None:
    questions = read_questions(toy / "train.json") + read_questions(toy / "heldout.json")
    assert len({q.video for q in questions}) >= 5
    for q in questions[::2]:
        path = toy / "videos" / q.video
        expected = list(reference.stream_generate(path, q.question, max_new_tokens=12))
        assert runtime.answer(path, q.question, max_new_tokens=12).tokens == expected, q


def test_follow_up_reuses_the_prefix_and_matches_the_reference_with_history(
    runtime, reference, toy: Path
) -> None:
    video = toy / "videos" / read_questions(toy / "train.json")[0].video
    chat = runtime.chat(video)
    first = chat.ask("What color is the ring?", max_new_tokens=12)
    follow_up = chat.ask("Which direction does the square move?", max_new_tokens=12)
    assert follow_up.prefix == "memory" and "vision" not in follow_up.timings_s
    expected = list(
        reference.stream_generate(
            video,
            "Which direction does the square move?",
            max_new_tokens=12,
            history=[("What color is the ring?", first.text)],
        )
    )
    assert follow_up.tokens == expected
    again = runtime.answer(video, "What color is the ring?", max_new_tokens=12)
    assert again.prefix == "memory" and again.tokens == first.tokens


def test_two_conversations_at_the_same_position_do_not_share_the_kv_cache(runtime, toy: Path) -> None:
    """Both ask the same first question, so both end at the same position: the first one's follow-up
    would continue the second's turns if positions told them apart."""
    from panda_edge.errors import PandaError

    video = toy / "videos" / read_questions(toy / "train.json")[0].video
    first, second = runtime.chat(video), runtime.chat(video)
    first.ask("What color is the ring?", max_new_tokens=6)
    second.ask("What color is the ring?", max_new_tokens=6)
    with pytest.raises(PandaError, match="another conversation used the runtime"):
        first.ask("Which direction does the square move?", max_new_tokens=6)
    assert second.ask("Which direction does the square move?", max_new_tokens=6).prefix == "memory"


def test_a_video_given_as_frames_gets_the_files_answer_token_for_token(runtime, toy: Path) -> None:
    """The frames `panda run` samples from a file, given as frames (also as more frames that the rule
    samples back to them), go through the same pre-processing and get the same answer."""
    from panda_edge.errors import VideoError
    from panda_edge.video.decode import read_video

    question = "Which direction does the square move?"
    for q in read_questions(toy / "heldout.json")[:3]:
        path = toy / "videos" / q.video
        sampled = read_video(path, max_frames=8).frames
        expected = runtime.answer(path, question, max_new_tokens=12)
        as_frames = runtime.chat_frames(sampled).ask(question, max_new_tokens=12)
        assert as_frames.tokens == expected.tokens and as_frames.prefix == "computed"
        # 15 frames at one per second: linspace(0, 14, 8) floors to 0, 2, 4, ..., 14, our 8 frames
        blank = np.zeros_like(sampled[0])
        padded = [f for frame in sampled for f in (frame, blank)][:15]
        again = runtime.chat_frames(padded).ask(question, max_new_tokens=12)
        assert again.prefix == "memory" and again.tokens == expected.tokens
    one = runtime.chat_frames(sampled[:1])
    assert one.video.frames == 1 and one.ask(question, max_new_tokens=4).tokens
    with pytest.raises(VideoError, match="must have one size"):
        runtime.chat_frames([sampled[0], sampled[1][:-2]])
    with pytest.raises(VideoError, match="at most 128 frames"):
        runtime.chat_frames([sampled[0]] * 129)
    with pytest.raises(VideoError, match="no frames"):
        runtime.chat_frames([])


def test_sampling_is_seeded_and_matches_the_reference(runtime, reference, toy: Path) -> None:
    from panda_edge.sampling import Sampling

    video = toy / "videos" / read_questions(toy / "train.json")[0].video
    sampling = Sampling(temperature=1.5, top_p=0.95, seed=7)
    a = runtime.answer(video, "What is in the video?", max_new_tokens=10, sampling=sampling).tokens
    b = runtime.answer(video, "What is in the video?", max_new_tokens=10, sampling=sampling).tokens
    assert a == b
    assert a == list(reference.stream_generate(video, "What is in the video?", 10, sampling))


def test_prefix_cache_on_disk_skips_vision_and_prefill(bundle: Path, toy: Path, tmp_path: Path) -> None:
    from panda_edge.runtime.options import RuntimeOptions

    video = toy / "videos" / read_questions(toy / "heldout.json")[0].video
    with RuntimeOptions(prefix_cache=tmp_path / "cache").open(bundle) as rt:
        computed = rt.answer(video, "How many shapes are in the video at the end?")
    assert computed.prefix == "computed" and len(list((tmp_path / "cache").glob("*.kv"))) == 1
    with RuntimeOptions(prefix_cache=tmp_path / "cache").open(bundle) as rt:
        cached = rt.answer(video, "How many shapes are in the video at the end?")
    assert cached.prefix == "disk" and "vision" not in cached.timings_s
    assert cached.tokens == computed.tokens
    with RuntimeOptions(gguf_type="f32", prefix_cache=tmp_path / "cache").open(bundle) as rt:  # another GGUF
        assert rt.answer(video, "How many?").prefix == "computed"


def test_prefix_cache_is_bounded_least_recently_used_out(bundle: Path, toy: Path, tmp_path: Path) -> None:
    from panda_edge.runtime.options import RuntimeOptions

    videos = sorted({q.video for q in read_questions(toy / "heldout.json")})[:3]
    cache = tmp_path / "cache"
    with RuntimeOptions(prefix_cache=cache).open(bundle) as rt:
        rt.answer(toy / "videos" / videos[0], "How many?", 2)
        one = next(cache.glob("*.kv")).stat().st_size
    with RuntimeOptions(prefix_cache=cache, cache_max_bytes=int(2.5 * one)).open(bundle) as rt:
        for video in videos[1:]:
            rt.answer(toy / "videos" / video, "How many?", 2)
        assert len(list(cache.glob("*.kv"))) == 2 and len(list(cache.glob("*.json"))) == 2
        assert rt.answer(toy / "videos" / videos[0], "How many?", 2).prefix == "computed"  # evicted
        assert rt.answer(toy / "videos" / videos[2], "How many?", 2).prefix in ("memory", "disk")


FULL_DISK = """
import resource, signal, sys
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (50_000, 50_000))  # files past 50 kB cannot be written
from panda_edge.cli.main import main
sys.argv = ["panda", *sys.argv[1:]]
main()
"""


def test_a_full_cache_disk_is_a_warning_not_a_failure(bundle: Path, toy: Path, tmp_path: Path) -> None:
    import subprocess
    import sys

    video = toy / "videos" / read_questions(toy / "heldout.json")[0].video
    args = ["run", "--bundle", str(bundle), str(video), "How many?", "--cache", str(tmp_path / "c")]
    done = subprocess.run(
        [sys.executable, "-c", FULL_DISK, *args, "--json", "-"], capture_output=True, text=True
    )
    assert done.returncode == 0, done.stderr
    assert "warning: the prefix cache" in done.stderr and "could not keep" in done.stderr
    assert json.loads(done.stdout)["prefix"] == "computed"
    assert not list((tmp_path / "c").iterdir())  # no half-written state left behind


def test_the_ort_runtime_never_imports_torch(bundle: Path, toy: Path) -> None:
    video = toy / "videos" / read_questions(toy / "train.json")[0].video
    code = (
        "import sys\n"
        "from panda_edge.cli.main import app\n"
        f"app(['run', '--bundle', {str(bundle)!r}, {str(video)!r}, 'What color is the ring?'],"
        " standalone_mode=False)\n"
        "assert 'torch' not in sys.modules, 'torch was imported'\n"
        "assert 'transformers' not in sys.modules\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip()


# --- the command line -------------------------------------------------------------------------------


def test_panda_run_streams_and_writes_json(bundle: Path, toy: Path, tmp_path: Path) -> None:
    q = read_questions(toy / "heldout.json")[0]
    video = toy / "videos" / q.video
    result = runner.invoke(app, ["run", "--bundle", str(bundle), str(video), q.question, "--json", "-"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["decoder"] == "llama.cpp llm.q8_0.gguf" and report["answer"]
    assert report["prefix"] == "computed" and report["ttft_ms"] > 0
    quantized_kv = runner.invoke(
        app, ["run", "--bundle", str(bundle), str(video), q.question, "--kv-type", "q8_0"]
    )
    assert quantized_kv.exit_code == 0 and quantized_kv.stdout.strip()
    old_spelling = runner.invoke(
        app, ["run", "--bundle", str(bundle), str(video), q.question, "--kv-cache", "q8_0"]
    )
    assert old_spelling.exit_code == 0 and old_spelling.stdout == quantized_kv.stdout
    assert "--kv-cache is deprecated: use --kv-type" in old_spelling.stderr
    streamed = runner.invoke(
        app, ["run", "--bundle", str(bundle), str(video), q.question, "--gguf-type", "f32"]
    )
    assert streamed.exit_code == 0 and streamed.stdout.strip()


def test_verbose_lets_llama_cpps_log_through_and_quiet_leaves_the_answer(bundle: Path, toy: Path) -> None:
    """`panda -v run`: llama.cpp's model load report and panda_edge's debug log on stderr; by default
    neither; `panda -q run`: the answer on stdout and nothing on stderr."""
    q = read_questions(toy / "heldout.json")[0]
    args = ["run", "--bundle", str(bundle), str(toy / "videos" / q.video), q.question]

    def panda(*flags: str) -> subprocess.CompletedProcess:
        command = [sys.executable, "-m", "panda_edge.cli.main", *flags, *args]
        done = subprocess.run(command, capture_output=True, text=True, timeout=120)
        assert done.returncode == 0, done.stderr
        return done

    verbose, default, quiet = panda("-v"), panda(), panda("-q")
    assert "llama_model_loader: loaded meta data" in verbose.stderr
    assert "info panda_edge.runtime.llm.llamacpp: loading" in verbose.stderr
    assert "debug panda_edge.memory: the runtime (llm.q8_0.gguf" in verbose.stderr
    assert "llama_model_loader" not in default.stderr and "panda_edge." not in default.stderr
    assert "first token" in default.stderr  # the timing line
    assert quiet.stderr == "" and quiet.stdout == default.stdout == verbose.stdout


def test_panda_chat_reads_turns_from_stdin(bundle: Path, toy: Path) -> None:
    video = toy / "videos" / read_questions(toy / "train.json")[0].video
    questions = "What color is the ring?\nHow many shapes are in the video at the end?\n"
    result = runner.invoke(app, ["chat", "--bundle", str(bundle), str(video), "--json", "-"], input=questions)
    assert result.exit_code == 0, result.output
    turns = json.loads(result.stdout)["turns"]
    assert [t["prefix"] for t in turns] == ["computed", "memory"]
    assert all(t["answer"] for t in turns)


def test_a_damaged_cached_prefix_in_chat_is_computed_again_with_a_warning(
    bundle: Path, toy: Path, tmp_path: Path
) -> None:
    """Flipped bytes in a cached state (same size) load without complaint in llama.cpp and answer
    garbage; the digest written with the file catches them: the prefix is computed again (the fresh
    answer), `panda chat` warns on stderr, and the file is replaced (the next run takes it from disk)."""
    from tests.conftest import flip_bytes

    video = toy / "videos" / read_questions(toy / "train.json")[0].video
    cache = tmp_path / "cache"

    def chat() -> tuple[dict, str]:
        args = ["chat", "--bundle", str(bundle), str(video), "--cache", str(cache), "--json", "-"]
        result = runner.invoke(app, args, input="What color is the ring?\nHow many shapes are there?\n")
        assert result.exit_code == 0, result.output
        return json.loads(result.stdout)["turns"], result.stderr

    fresh, stderr = chat()
    assert [t["prefix"] for t in fresh] == ["computed", "memory"] and "warning" not in stderr
    (state,) = cache.glob("*.kv")
    flip_bytes(state)
    again, stderr = chat()
    assert [t["prefix"] for t in again] == ["computed", "memory"]
    assert [t["answer"] for t in again] == [t["answer"] for t in fresh]
    assert "warning: the cached prefix" in stderr and "is damaged" in stderr, stderr
    replaced, stderr = chat()
    assert [t["prefix"] for t in replaced] == ["disk", "memory"] and "warning" not in stderr
    assert [t["answer"] for t in replaced] == [t["answer"] for t in fresh]


def test_a_full_context_in_chat_keeps_the_transcript_and_exits_2(
    bundle: Path, toy: Path, tmp_path: Path
) -> None:
    """The tiny model's prefix is 161 positions and llama.cpp pads a small context to 256: some turns
    fit, the rest of twelve do not."""
    video = toy / "videos" / read_questions(toy / "train.json")[0].video
    transcript = tmp_path / "chat.json"
    questions = ["What color is the ring?", "Which direction does the red square move?"] * 6
    args = ["chat", "--bundle", str(bundle), str(video), "--n-ctx", "180", "--max-new-tokens", "8"]
    result = runner.invoke(app, [*args, "--json", str(transcript)], input="\n".join(questions) + "\n")
    assert result.exit_code == 2, result.output
    assert "do not fit the context of" in result.stderr and "Traceback" not in result.output
    last = result.stderr.strip().splitlines()[-1]  # after one timing line per answered turn
    assert last.startswith("error: ") and "do not fit the context" in last, result.stderr
    report = json.loads(transcript.read_text())
    asked = [t["question"] for t in report["turns"]]
    assert 1 <= len(asked) < len(questions) and asked == questions[: len(asked)]
    assert all(t["answer"] for t in report["turns"]) and "do not fit the context" in report["error"]


def _with_engine(bundle: Path, target: Path) -> tuple[Path, dict]:
    """A copy of the bundle with an fp16 engine recorded as panda build-engine records one (its bytes
    a stand-in: TensorRT cannot be installed here, and nothing below deserializes it)."""
    from panda_edge.bundle import extend_manifest, load_manifest

    shutil.copytree(bundle, target)
    record = {
        "file": "stab.orin.fp16.engine",
        "precision": "fp16",
        "tensorrt": "10.3.0",
        "gpu": {"name": "Orin", "compute_capability": "8.7"},
    }
    (target / record["file"]).write_bytes(b"serialized engine")
    extend_manifest(target, load_manifest(target), {"engines": {record["file"]: record}}, [record["file"]])
    return target, record


def test_trt_runs_the_engine_of_the_asked_precision_or_names_what_to_build(
    bundle: Path, toy: Path, tmp_path: Path
) -> None:
    """--precision fp32 used to run the fp16 engine and report fp32; now the bundle's engines are
    read before TensorRT is imported and another precision never stands in."""
    from panda_edge.runtime.vision import trt_available

    with_engine, _ = _with_engine(bundle, tmp_path / "B")
    video = str(next((toy / "videos").iterdir()))
    args = ["run", "--bundle", str(with_engine), video, "q", "--vision", "trt"]
    _one_line_exit_2(
        [*args, "--precision", "fp32"],
        f"{with_engine}: no fp32 TensorRT engine (it has stab.orin.fp16.engine (fp16, TensorRT 10.3.0, "
        f"Orin)); build one on this device: panda build-engine --bundle {with_engine} --precision fp32",
    )
    _one_line_exit_2([*args, "--precision", "int4"], "unknown vision precision 'int4' for --vision trt")
    _one_line_exit_2(
        ["run", "--bundle", str(with_engine), video, "q", "--precision", "fp16"],
        "unknown vision precision 'fp16' for --vision ort",
    )
    if not trt_available().usable:  # the fp16 engine exists: what stops it here is TensorRT itself
        _one_line_exit_2(args, "the trt vision backend cannot run here")
        _one_line_exit_2([*args, "--precision", "fp16"], "the trt vision backend cannot run here")


def test_the_prefix_cache_identity_is_the_file_the_vision_backend_runs(bundle: Path, tmp_path: Path) -> None:
    """A rebuilt engine must not reuse a prefix its predecessor computed: with trt the identity
    hashes the engine, not the ONNX graph it was built from."""
    from panda_edge.bundle import Manifest, load_manifest
    from panda_edge.runtime.bundle_parts import open_bundle
    from panda_edge.runtime.video_runtime import vision_file

    with_engine, record = _with_engine(bundle, tmp_path / "B")
    engine = Manifest.load(with_engine).engine_for(record)
    assert (
        vision_file(open_bundle(with_engine, precision="fp16", backend="trt"), "trt", engine)
        == record["file"]
    )
    assert vision_file(open_bundle(with_engine), "ort") == "stab.onnx"
    files = load_manifest(with_engine)["files"]
    assert files[record["file"]]["sha256"] != files["stab.onnx"]["sha256"]


def test_a_killed_export_leaves_the_working_bundle_working(toy: Path, tmp_path: Path) -> None:
    """`panda export --target gguf` into a bundle that works, killed while it writes: the bundle
    still answers (its manifest was never removed), and the export then completes; the second start
    reads no file again (this machine hashed each at its present stat)."""
    out = tmp_path / "B"
    first = ["export", "--target", "all", "--checkpoint", "tiny", "--out", str(out), "--gguf-type", "f32"]
    assert runner.invoke(app, first).exit_code == 0
    src = str(Path(__file__).parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    args = ["export", "--target", "gguf", "--checkpoint", "tiny", "--out", str(out), "--gguf-type", "q8_0"]
    export = subprocess.Popen(
        [sys.executable, "-m", "panda_edge.cli.main", *args],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        deadline = time.monotonic() + 120
        while export.poll() is None and time.monotonic() < deadline:
            if any(p.name.startswith(".llm.q8_0.gguf.") for p in out.iterdir()):
                export.send_signal(signal.SIGKILL)
                break
            time.sleep(0.002)
        assert export.wait(timeout=60) == -signal.SIGKILL, "the export ended before it could be killed"
    finally:
        if export.poll() is None:
            export.kill()
    video = str(next((toy / "videos").iterdir()))
    result = runner.invoke(
        app, ["run", "--bundle", str(out), video, "What color is the ring?", "--json", "-"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["answer"] and report["decoder"] == "llama.cpp llm.f32.gguf"
    assert report["verified"] == {
        "hashed": [],
        "unchanged": sorted(json.loads((out / "manifest.json").read_text())["files"]),
    }
    assert runner.invoke(app, args).exit_code == 0
    result = runner.invoke(
        app, ["run", "--bundle", str(out), video, "q", "--gguf-type", "q8_0", "--json", "-"]
    )
    assert result.exit_code == 0 and json.loads(result.stdout)["verified"]["hashed"] == []


def _fails_with(args: list[str], message: str) -> None:
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output


def test_not_enough_memory_for_the_runtime_is_exit_2(bundle: Path, toy: Path) -> None:
    from panda_edge.memory import BUDGET_ENV

    video = str(next((toy / "videos").iterdir()))
    result = runner.invoke(app, ["run", "--bundle", str(bundle), video, "q"], env={BUDGET_ENV: "0.1"})
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "the runtime (llm.q8_0.gguf, a 2048-position f16 KV cache) needs about" in result.stderr
    assert "--n-ctx" in result.stderr and "Traceback" not in result.output


def test_bad_videos_and_bundles_exit_2_with_one_line(bundle: Path, toy: Path, tmp_path: Path) -> None:
    video = str(next((toy / "videos").iterdir()))
    _fails_with(["run", "--bundle", str(bundle), str(tmp_path / "none.mp4"), "q"], "no such video file")
    (tmp_path / "text.mp4").write_text("not a video")
    _fails_with(["run", "--bundle", str(bundle), str(tmp_path / "text.mp4"), "q"], "not a readable video")
    _fails_with(["run", "--bundle", str(tmp_path / "nowhere"), video, "q"], "no such bundle directory")
    _fails_with(["run", "--bundle", str(bundle), video, "q", "--gguf-type", "q4_k_m"], "no q4_k_m GGUF")
    _fails_with(["run", "--bundle", str(bundle), video, "q", "--vision", "cuda"], "unknown vision backend")

    onnx_only = tmp_path / "onnx-only"
    export_bundle("tiny", onnx_only)
    _fails_with(["run", "--bundle", str(onnx_only), video, "q"], "no GGUF decoder")

    altered = tmp_path / "altered"
    shutil.copytree(bundle, altered)
    with open(altered / "llm.q8_0.gguf", "r+b") as f:
        f.seek(-8, 2)
        f.write(b"\xff" * 8)
    _fails_with(["run", "--bundle", str(altered), video, "q"], "does not match its manifest hash")


def test_a_gguf_from_another_model_is_refused(
    bundle: Path, toy: Path, tmp_path: Path, tokenizer_file
) -> None:
    """A bundle whose GGUF was swapped for another model's (manifest re-hashed) fails at load."""
    from dataclasses import replace

    from tests.conftest import random_tiny_model

    from panda_edge.bundle import load_manifest, write_manifest
    from panda_edge.config import PRESETS

    tiny = PRESETS["tiny"]
    other = random_tiny_model(
        tokenizer_file, replace(tiny, llm=replace(tiny.llm, hidden_size=2 * tiny.llm.hidden_size))
    )
    other.save_pretrained(tmp_path / "other")
    mixed = tmp_path / "mixed"
    shutil.copytree(bundle, mixed)
    export_gguf(tmp_path / "other", tmp_path / "other-bundle", "q8_0")
    shutil.copyfile(tmp_path / "other-bundle" / "llm.q8_0.gguf", mixed / "llm.q8_0.gguf")
    manifest = load_manifest(mixed, verify=False)
    write_manifest(mixed, {k: v for k, v in manifest.items() if k != "files"}, manifest["files"])
    video = str(next((toy / "videos").iterdir()))
    _fails_with(["run", "--bundle", str(mixed), video, "q"], "parts do not fit together")


def _one_line_exit_2(args: list[str], message: str) -> None:
    """Exit 2 and one line on stderr saying `message`, no traceback."""
    result = runner.invoke(app, args)
    assert result.exit_code == 2, result.output
    assert message in result.output and "Traceback" not in result.output
    assert len(result.output.strip().splitlines()) == 1, result.output


def _edited_copy(bundle: Path, tmp_path: Path, edit) -> Path:
    """A copy of the bundle whose manifest `edit` changed (its files and their hashes untouched)."""
    copy = tmp_path / "edited"
    shutil.copytree(bundle, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    edit(manifest)
    (copy / "manifest.json").write_text(json.dumps(manifest))
    return copy


OUTSIDE = {  # manifest field -> extra `panda run` options that make the runtime open it
    ("vision", "file"): [],
    ("llm", "gguf", "q8_0", "file"): [],
    ("tokenizer",): [],
    ("prompt",): [],
    ("vision_int8", "cpu_file"): ["--precision", "int8"],
    ("engines", "stab.gpu.fp16.engine", "file"): ["--vision", "trt"],
}


@pytest.mark.parametrize("field", list(OUTSIDE), ids=[".".join(k) for k in OUTSIDE])
def test_a_manifest_naming_a_file_outside_the_bundle_is_refused(
    bundle: Path, toy: Path, tmp_path: Path, field: tuple[str, ...]
) -> None:
    """Not only `files`: a field naming ../x/stab.onnx would load a file whose hash nobody checked."""
    (tmp_path / "x").mkdir()
    shutil.copyfile(bundle / "stab.onnx", tmp_path / "x" / "stab.onnx")

    def point_outside(manifest: dict) -> None:
        *parents, last = field
        node = manifest
        for key in parents:
            node = node.setdefault(key, {})
        node[last] = "../x/stab.onnx"

    copy = _edited_copy(bundle, tmp_path, point_outside)
    video = str(next((toy / "videos").iterdir()))
    _one_line_exit_2(["run", "--bundle", str(copy), video, "q", *OUTSIDE[field]], "outside the bundle")


def test_a_manifest_naming_a_file_it_does_not_hash_is_refused(
    bundle: Path, toy: Path, tmp_path: Path
) -> None:
    def unlisted(manifest: dict) -> None:
        manifest["vision"]["file"] = "copy.onnx"

    copy = _edited_copy(bundle, tmp_path, unlisted)
    shutil.copyfile(copy / "stab.onnx", copy / "copy.onnx")
    video = str(next((toy / "videos").iterdir()))
    _one_line_exit_2(["run", "--bundle", str(copy), video, "q"], "which its 'files' does not list")


@pytest.mark.parametrize(
    "key", ["model.vision.video_frames", "vision.outputs", "llm.gguf.q8_0.file", "model.llm.hidden_size"]
)
def test_a_manifest_missing_a_key_names_it(bundle: Path, toy: Path, tmp_path: Path, key: str) -> None:
    def drop(manifest: dict) -> None:
        *parents, last = key.split(".")
        node = manifest
        for part in parents:
            node = node[part]
        del node[last]

    copy = _edited_copy(bundle, tmp_path, drop)
    video = str(next((toy / "videos").iterdir()))
    _one_line_exit_2(["run", "--bundle", str(copy), video, "q"], f"the manifest has no '{key.split('.')[0]}")
    result = runner.invoke(app, ["run", "--bundle", str(copy), video, "q"])
    assert f"'{key}'" in result.output or key.startswith("vision.outputs"), result.output


@pytest.mark.skipif(sys.platform != "linux", reason="the address-space limit that keeps this safe is Linux's")
def test_a_context_too_large_for_memory_says_what_to_do(bundle: Path, toy: Path) -> None:
    """`panda run` refuses a 10**9-token context before loading (the memory check); below it,
    llama-cpp-python's ValueError('Failed to create llama_context') from the real llama.cpp becomes a
    message too (in a child process limited to 8 GiB of address space, so the allocation fails on any
    machine, whatever its overcommit policy)."""
    video = str(next((toy / "videos").iterdir()))
    result = runner.invoke(app, ["run", "--bundle", str(bundle), video, "q", "--n-ctx", str(10**9)])
    assert result.exit_code == 2 and len(result.stderr.strip().splitlines()) == 1
    assert "1000000000-position f16 KV cache) needs about" in result.stderr and "--n-ctx" in result.stderr
    code = (
        "import sys, resource\n"
        "from pathlib import Path\n"
        "resource.setrlimit(resource.RLIMIT_AS, (8 << 30, 8 << 30))\n"
        "from panda_edge.errors import PandaError\n"
        "from panda_edge.runtime.llm.llamacpp import load_llama\n"
        "try:\n"
        "    load_llama(Path(sys.argv[1]), 10**9, 512, 1)\n"
        "except PandaError as exc:\n"
        "    print(f'error: {exc}', file=sys.stderr)\n"
        "    sys.exit(2)\n"
    )
    src = str(Path(__file__).parents[1] / "src")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([src, os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(
        [sys.executable, "-c", code, str(bundle / "llm.q8_0.gguf")],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert done.returncode == 2, done.stderr[-3000:]
    lines = [line for line in done.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "smaller --n-ctx" in lines[0] and "Traceback" not in done.stderr, done.stderr


# --- parity levels ------------------------------------------------------------------------------------


def test_parity_e2e_and_task_levels(bundle: Path, toy: Path) -> None:
    result = runner.invoke(
        app,
        [
            "parity",
            "--checkpoint",
            "tiny",
            "--bundle",
            str(bundle),
            "--levels",
            "e2e,task",
            "--qa",
            str(toy / "heldout.json"),
            "--e2e-videos",
            "4",
            "--json",
            "-",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == {"source", "reference", "e2e", "task"}
    assert report["reference"] == {"dtype": "fp32", "device": "cpu", "weights_stored": "float16"}
    assert report["e2e"]["videos"] == 4 and report["e2e"]["identical_answers"] == 4
    task = report["task"]
    assert task["questions"] == len(read_questions(toy / "heldout.json")) and task["gguf"] == "q8_0"
    assert abs(task["delta_points"]) <= 1.0
    agreement = task["gguf_agreement"]
    assert agreement["baseline"] == "f32" and agreement["questions"] == task["questions"]
    assert 0 <= agreement["same_answers"] <= agreement["questions"]


def test_bench_e2e_reports_both_engines() -> None:
    result = runner.invoke(app, ["bench", "e2e", "--repeat", "1", "--max-new-tokens", "4", "--json", "-"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    for engine in ("torch", "runtime"):
        numbers = report["e2e"][engine]
        assert numbers["ttft_first_ms"] > 0 and numbers["ttft_followup_ms"] > 0 and numbers["peak_rss_mb"] > 0
    assert report["ratios"]["runtime_followup_vs_first_ttft"] > 0


def test_weights_that_llama_cpp_repacks_are_read_not_mapped(tiny_bundle: Path) -> None:
    """Where llama.cpp repacks weights for its CPU kernels (every CPU but those with AMX, where the
    weights go into plain buffers), the GGUF is read instead of memory-mapped, so the repacked copy
    does not sit beside the mapped original (7B q4_k_m: 9.72 GB mapped vs 6.80 GB read, against a
    7.10 GB plan; benchmarks/results/run_vs_plan_7b.json); a GPU run and a vocabulary load still map it."""
    from panda_edge.optional import llama_cpp
    from panda_edge.runtime.llm.llamacpp import load_llama

    lib = llama_cpp()
    amx = b"AMX_INT8 = 1" in lib.llama_print_system_info()
    gguf = tiny_bundle / "llm.q8_0.gguf"
    cpu = load_llama(gguf, 64, 64, 1)
    vocab = load_llama(gguf, 64, 64, 1, vocab_only=True)
    try:
        mapped = lib.LLAMA_LOAD_MODE_MMAP
        assert (cpu.model_params.load_mode == mapped) is amx
        assert vocab.model_params.load_mode == mapped
    finally:
        cpu.close()
        vocab.close()


def test_the_torch_backends_prefix_identity_is_its_weights() -> None:
    """--vision torch runs the checkpoint's vision part, not the bundle's graph: the prefix cache keys
    its prefixes by those weights, so two checkpoints never share a cached prefix."""
    import torch

    from panda_edge.model.vision import VisionTower
    from panda_edge.runtime.vision.torch_ref import TorchVisionReference

    tower = VisionTower.from_checkpoint("tiny")
    same = TorchVisionReference(VisionTower.from_checkpoint("tiny")).weights_sha256()
    assert TorchVisionReference(tower).weights_sha256() == same
    with torch.no_grad():
        next(iter(tower.projector.parameters())).view(-1)[0] += 1e-3
    assert TorchVisionReference(tower).weights_sha256() != same
