"""The export bundle: manifest contents, hash checks, and what a failed export leaves behind."""

from __future__ import annotations

import dataclasses
import json
import os
import time
from pathlib import Path

import pytest

from panda_edge.backends import TRT_TARGETS as PROFILES
from panda_edge.bundle import (
    MANIFEST_FILE,
    VERIFIED_FILE,
    Manifest,
    extend_manifest,
    file_record,
    load_manifest,
    manifest_value,
    record_files,
    verify_files,
)
from panda_edge.config import PRESETS
from panda_edge.errors import BundleError, CheckFailed, PandaError
from panda_edge.export.stab_onnx.export_onnx import export_bundle
from panda_edge.fileio import write_json


@pytest.fixture(scope="module")
def bundle(tiny_checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("bundle") / "tiny-10"
    export_bundle(tiny_checkpoint, out, "10")
    return out


def _copy(bundle: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "bundle"
    copy.mkdir()
    for f in bundle.iterdir():
        (copy / f.name).write_bytes(f.read_bytes())
    return copy


def test_manifest_describes_the_bundle(bundle: Path, tiny_checkpoint: Path) -> None:
    manifest = load_manifest(bundle)
    assert manifest["format_version"] == 1
    assert set(manifest["files"]) == {"stab.onnx", "tokenizer.model", "prompt.json"}
    assert sorted(p.name for p in bundle.iterdir()) == [
        ".verified.json",  # this machine's hashes, by stat (test_unchanged_files_are_not_hashed_again)
        "manifest.json",
        "prompt.json",
        "stab.onnx",
        "tokenizer.model",
    ]
    for name, record in manifest["files"].items():
        assert record == file_record(bundle / name)
    source = manifest["source"]
    assert Path(source["checkpoint"]) == tiny_checkpoint.resolve()
    assert source["weights"] == {"model.safetensors": file_record(tiny_checkpoint / "model.safetensors")}
    vision = manifest["vision"]
    assert vision["inputs"] == {"frames": {"shape": [8, 4, 112, 112], "dtype": "float32"}}
    hidden = PRESETS["tiny"].llm.hidden_size
    assert vision["outputs"] == {"visual_tokens": {"shape": [8, 21, hidden], "dtype": "float32"}}
    assert (vision["profile"], vision["opset"], vision["precision"]) == ("10", 17, "fp32")
    assert manifest["model"]["vision"]["width"] == 128
    assert set(manifest["tools"]) == {"torch", "onnx", "onnxruntime", "panda-edge"}
    assert (bundle / "tokenizer.model").read_bytes() == (tiny_checkpoint / "tokenizer.model").read_bytes()
    prompt = json.loads((bundle / "prompt.json").read_text())
    assert prompt["template"] == "videopanda_v1" and prompt["image_token_index"] == -200


def test_changed_file_is_refused(bundle: Path, tmp_path: Path) -> None:
    copy = _copy(bundle, tmp_path)
    data = bytearray((copy / "stab.onnx").read_bytes())
    data[-1] ^= 0xFF  # same size, different bytes
    (copy / "stab.onnx").write_bytes(bytes(data))
    with pytest.raises(PandaError, match=r"stab.onnx does not match its manifest hash"):
        load_manifest(copy)
    assert load_manifest(copy, verify=False)["format_version"] == 1


def test_missing_file_and_manifest_are_refused(bundle: Path, tmp_path: Path) -> None:
    copy = _copy(bundle, tmp_path)
    (copy / "tokenizer.model").unlink()
    with pytest.raises(BundleError, match=r"tokenizer\.model is listed in the manifest but missing"):
        load_manifest(copy)
    (copy / MANIFEST_FILE).unlink()
    with pytest.raises(BundleError, match=r"no manifest\.json"):
        load_manifest(copy)
    with pytest.raises(BundleError, match="no such bundle directory"):
        load_manifest(tmp_path / "nowhere")


def test_extend_manifest_hashes_only_new_files(bundle: Path, tmp_path: Path) -> None:
    """Listed files keep their loaded records (no second hash of a 13 GB GGUF); new ones are hashed."""
    copy = _copy(bundle, tmp_path)
    manifest = load_manifest(copy)
    marked = {**manifest["files"]["stab.onnx"], "sha256": "kept, not recomputed"}
    manifest["files"]["stab.onnx"] = marked
    (copy / "notes.txt").write_text("added later")
    out = extend_manifest(copy, manifest, {"notes": {"file": "notes.txt"}}, ["notes.txt"])
    assert out["files"]["stab.onnx"] == marked
    assert out["files"]["notes.txt"] == file_record(copy / "notes.txt")
    assert out["notes"] == {"file": "notes.txt"}
    assert out["source"] == manifest["source"] and out["format_version"] == 1
    (copy / "tokenizer.model").unlink()
    manifest = load_manifest(copy, verify=False)
    out = extend_manifest(copy, manifest, {}, [])
    assert "tokenizer.model" not in out["files"] and "notes.txt" in out["files"]
    assert json.loads((copy / MANIFEST_FILE).read_text()) == out


def test_other_format_version_is_refused(bundle: Path, tmp_path: Path) -> None:
    copy = _copy(bundle, tmp_path)
    manifest = json.loads((copy / MANIFEST_FILE).read_text())
    write_json(copy / MANIFEST_FILE, {**manifest, "format_version": 2})
    with pytest.raises(BundleError, match="format version 2"):
        load_manifest(copy)
    write_json(copy / MANIFEST_FILE, {**manifest, "files": {"../escape": {"sha256": "0", "size": 1}}})
    with pytest.raises(BundleError, match="outside the bundle"):
        load_manifest(copy)


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("../x/stab.onnx", "outside the bundle"),
        ("/tmp/stab.onnx", "outside the bundle"),
        ("sub/../stab.onnx", "outside the bundle"),
        ("notes.txt", "does not list"),
        (7, "not a file name"),
    ],
)
def test_every_file_a_field_names_is_inside_and_hashed(bundle: Path, name: object, message: str) -> None:
    data = load_manifest(bundle)
    assert Manifest.load(bundle).vision_graph("ort", "fp32") == bundle / "stab.onnx"
    with pytest.raises(BundleError, match=message):  # refused when the manifest is parsed
        Manifest.from_dict({**data, "vision": {**data["vision"], "file": name}}, bundle)


def test_a_missing_manifest_key_is_named(bundle: Path) -> None:
    manifest = Manifest.load(bundle)
    assert manifest.config.vision.video_frames == 8
    assert manifest.tokenizer_path() == bundle / "tokenizer.model"
    with pytest.raises(BundleError, match=r"no 'model\.nothing'"):
        manifest_value(manifest.to_dict(), "model.nothing.deeper", bundle)
    with pytest.raises(BundleError, match="no GGUF decoder; run panda export --target gguf"):
        manifest.gguf("q8_0")
    data = manifest.to_dict()
    vision = {k: v for k, v in data["model"]["vision"].items() if k != "video_frames"}
    with pytest.raises(BundleError, match=r"no 'model\.vision\.video_frames'.*export again"):
        Manifest.from_dict({**data, "model": {**data["model"], "vision": vision}}, bundle)
    with pytest.raises(BundleError, match=r"'model\.vision' does not fit .*export again"):
        Manifest.from_dict(
            {**data, "model": {**data["model"], "vision": {**vision, "video_frames": 8, "x": 1}}}, bundle
        )


def test_a_failed_export_leaves_the_bundle_as_it_was(
    tiny_checkpoint: Path, bundle: Path, tmp_path: Path
) -> None:
    """A profile whose parser knows none of our operators: the export stops, its files never get
    their names, and the bundle it was about to replace still loads (its manifest untouched)."""
    copy = _copy(bundle, tmp_path)
    before = {p.name: p.read_bytes() for p in copy.iterdir() if p.name != VERIFIED_FILE}
    strict = dataclasses.replace(PROFILES["10"], profile="none", allowed_ops=frozenset())
    with pytest.raises(CheckFailed, match="operator MatMul"):
        export_bundle(tiny_checkpoint, copy, strict)
    assert {p.name: p.read_bytes() for p in copy.iterdir() if p.name != VERIFIED_FILE} == before
    assert load_manifest(copy)["vision"]["profile"] == "10"


def test_unchanged_files_are_not_hashed_again(bundle: Path, tmp_path: Path) -> None:
    """`panda run` verifies every file at each start: one this machine hashed at the same size,
    mtime, ctime and inode is not read again; any change is hashed, and refused if it differs."""
    copy = _copy(bundle, tmp_path)  # new inodes: the copied .verified.json does not apply
    manifest = load_manifest(copy, verify=False)
    assert set(verify_files(copy, manifest).values()) == {"hashed"}
    assert set(verify_files(copy, manifest).values()) == {"unchanged"}
    assert record_files(copy, ["stab.onnx"]) == (
        {"stab.onnx": manifest["files"]["stab.onnx"]},
        {"stab.onnx": "unchanged"},
    )
    onnx = copy / "stab.onnx"
    st = onnx.stat()
    os.utime(onnx, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched, same bytes: hashed, accepted
    assert verify_files(copy, manifest) == {
        **dict.fromkeys(manifest["files"], "unchanged"),
        "stab.onnx": "hashed",
    }
    data = bytearray(onnx.read_bytes())
    data[-1] ^= 0xFF  # same size, other bytes, and the mtime set back: the ctime still moved
    st = onnx.stat()
    time.sleep(0.05)  # file times tick with the kernel's coarse clock (a few ms)
    onnx.write_bytes(bytes(data))
    os.utime(onnx, ns=(st.st_atime_ns, st.st_mtime_ns))
    with pytest.raises(BundleError, match=r"stab\.onnx does not match its manifest hash"):
        load_manifest(copy)
    onnx.write_bytes((bundle / "stab.onnx").read_bytes())
    assert verify_files(copy, manifest)["stab.onnx"] == "hashed"
    cache = json.loads((copy / VERIFIED_FILE).read_text())
    write_json(copy / VERIFIED_FILE, {**cache, "host": "another machine"})  # a copied bundle's cache
    assert set(verify_files(copy, manifest).values()) == {"hashed"}


def test_unknown_profile_and_checkpoint(tmp_path: Path) -> None:
    with pytest.raises(PandaError, match="unknown TensorRT profile '9'"):
        export_bundle("anything", tmp_path / "b", "9")
    with pytest.raises(PandaError, match="no such checkpoint directory"):
        export_bundle(tmp_path / "missing", tmp_path / "b", "11")


def test_atomic_files_get_ordinary_permissions(tmp_path) -> None:
    import os
    import stat

    from panda_edge.fileio import write_json

    write_json(tmp_path / "x.json", {"a": 1})
    mode = stat.S_IMODE(os.stat(tmp_path / "x.json").st_mode)
    assert mode == 0o666 & ~_current_umask()


def _current_umask() -> int:
    import os

    mask = os.umask(0)
    os.umask(mask)
    return mask


def _typed(**sections: object) -> Manifest:
    """A manifest of these sections, every file it names listed (the files themselves not needed)."""
    names = [
        "stab.onnx",
        "stab.int8.onnx",
        "stab.int8.cpu.onnx",
        *(f"llm.{t}.gguf" for t in ("f32", "f16", "q8_0")),
    ]
    return Manifest.from_dict({"files": {n: {"sha256": "0" * 64, "size": 1} for n in names}, **sections}, "B")


def test_manifest_says_which_gguf_and_which_vision_graph() -> None:
    ggufs = {"llm": {"gguf": {t: {"file": f"llm.{t}.gguf"} for t in ("f32", "f16", "q8_0")}}}
    vision = {"vision": {"file": "stab.onnx", "profile": "11"}}
    int8 = {"vision_int8": {"file": "stab.int8.onnx", "cpu_file": "stab.int8.cpu.onnx"}}
    manifest = _typed(**ggufs, **vision, **int8)
    assert manifest.gguf().type == "q8_0"  # backends.GGUF_PREFERENCE
    assert manifest.gguf_path("f16") == Path("B/llm.f16.gguf")
    with pytest.raises(BundleError, match=r"no q4_k_m GGUF \(it holds f16, f32, q8_0\); run panda export"):
        manifest.gguf("q4_k_m")
    assert manifest.vision_graph("ort", "fp32") == Path("B/stab.onnx")
    assert manifest.vision_graph("ort", "int8") == Path("B/stab.int8.cpu.onnx")  # ONNX Runtime's U8S8 form
    assert manifest.vision_graph("trt", "int8") == Path("B/stab.int8.onnx")  # TensorRT's Q/DQ form
    assert manifest.vision_graph("trt", "fp16") == Path("B/stab.onnx")
    assert manifest.graph("vision_int8").profile == "11"  # the fp32 graph's, when its own is not written
    with pytest.raises(PandaError, match="unknown vision precision 'int8' for --vision torch"):
        manifest.vision_graph("torch", "int8")
    only_tensorrt_form = _typed(**vision, vision_int8={"file": "stab.int8.onnx"})
    assert only_tensorrt_form.vision_graph("ort", "int8") == Path("B/stab.int8.onnx")
    with pytest.raises(BundleError, match="no INT8 vision graph; run panda calibrate"):
        _typed(**vision).vision_graph("ort", "int8")
    with pytest.raises(BundleError, match="no GGUF decoder"):
        _typed(**vision).gguf()


def test_manifest_refuses_a_gguf_it_does_not_hash() -> None:
    with pytest.raises(
        BundleError, match=r"'llm\.gguf\.q4_k_m\.file' names llm\.q4_k_m\.gguf, which its 'files'"
    ):
        _typed(llm={"gguf": {"q4_k_m": {"file": "llm.q4_k_m.gguf"}}})
    with pytest.raises(BundleError, match=r"no 'llm\.gguf\.f16\.file'.*export again"):
        _typed(llm={"gguf": {"f16": {"type": "f16"}}})
