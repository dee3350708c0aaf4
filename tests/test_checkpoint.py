"""Loading checkpoints in the released layout: safetensors and .bin, sharded, aliases, bad keys."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from panda_edge.config import read_config
from panda_edge.errors import CheckpointError
from panda_edge.model.checkpoint import BIN_INDEX, SAFE_INDEX
from panda_edge.model.videopanda import VideoPanda


def _copy_meta(src: Path, dst: Path) -> Path:
    dst.mkdir(parents=True)
    for name in ("config.json", "preprocessor_config.json", "tokenizer.model"):
        shutil.copy(src / name, dst / name)
    return dst


def _write_bin_shards(state: dict[str, torch.Tensor], directory: Path, shards: int) -> None:
    names = list(state)
    weight_map = {}
    for i in range(shards):
        file = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {n: state[n].clone() for n in names[i::shards]}
        torch.save(part, directory / file)
        weight_map.update(dict.fromkeys(part, file))
    (directory / BIN_INDEX).write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))


def _assert_same_weights(a: VideoPanda, b: VideoPanda) -> None:
    sa, sb = a.official_state_dict(), b.official_state_dict()
    assert sa.keys() == sb.keys()
    assert all(torch.equal(sa[k], sb[k]) for k in sa)


def test_official_names(tiny_model) -> None:
    names = tiny_model.official_state_dict().keys()
    for expected in (
        "model.video_tower.class_embedding",
        "model.video_tower.temporal_cls_token",
        "model.video_tower.lmhra1.pos_embed.2.weight",
        "model.video_tower.lmhra2.pos_embed.3.bias",
        "model.video_tower.dpe.weight",
        "model.video_tower.dec.attn.in_proj_weight",
        "model.video_tower.dec.mlp.c_proj.weight",
        "model.video_tower.proj.2.weight",
        "model.video_tower.local_attention.kv.1.weight",
        "model.video_tower.global_attention.q.0.bias",
        "model.video_projector.0.weight",
        "model.video_projector.2.bias",
        "model.embed_tokens.weight",
        "model.layers.1.self_attn.q_proj.weight",
        "lm_head.weight",
    ):
        assert expected in names
    assert not any(".proj.1." in n for n in names)  # dropout has no weights


def test_save_and_load_round_trip(tiny_model, tiny_checkpoint: Path) -> None:
    loaded = VideoPanda.from_pretrained(tiny_checkpoint)
    _assert_same_weights(tiny_model, loaded)
    assert read_config(tiny_checkpoint) == tiny_model.config
    assert (tiny_checkpoint / "model.safetensors").is_file()


def test_sharded_safetensors(tiny_model, tmp_path: Path) -> None:
    tiny_model.save_pretrained(tmp_path / "sharded", max_shard_bytes=1_000_000)
    index = json.loads((tmp_path / "sharded" / SAFE_INDEX).read_text())
    assert len(set(index["weight_map"].values())) >= 3
    _assert_same_weights(tiny_model, VideoPanda.from_pretrained(tmp_path / "sharded"))


def test_sharded_bin_with_aliases_and_training_modules(
    tiny_model, tiny_checkpoint: Path, tmp_path: Path
) -> None:
    """Released weights may name the tower `vision_tower` and the projector `mm_projector`."""
    state = {}
    for name, tensor in tiny_model.official_state_dict().items():
        name = name.replace("model.video_tower.", "model.vision_tower.")
        state[name.replace("model.video_projector.", "model.mm_projector.")] = tensor
    state["model.video_teacher.blocks.0.weight"] = torch.zeros(3)
    state["model.video_tower_compressor.input_layer.weight"] = torch.zeros(2, 2)
    directory = _copy_meta(tiny_checkpoint, tmp_path / "bin")
    _write_bin_shards(state, directory, shards=3)
    loaded = VideoPanda.from_pretrained(directory)
    _assert_same_weights(tiny_model, loaded)
    assert sorted(loaded.skipped_weights) == [
        "model.video_teacher.blocks.0.weight",
        "model.video_tower_compressor.input_layer.weight",
    ]


def test_single_bin(tiny_model, tiny_checkpoint: Path, tmp_path: Path) -> None:
    directory = _copy_meta(tiny_checkpoint, tmp_path / "bin1")
    torch.save(tiny_model.official_state_dict(), directory / "pytorch_model.bin")
    _assert_same_weights(tiny_model, VideoPanda.from_pretrained(directory))


def test_renamed_key_is_named_in_the_error(tiny_model, tiny_checkpoint: Path, tmp_path: Path) -> None:
    state = dict(tiny_model.official_state_dict())
    state["model.video_tower.balance_renamed"] = state.pop("model.video_tower.balance")
    directory = _copy_meta(tiny_checkpoint, tmp_path / "renamed")
    torch.save(state, directory / "pytorch_model.bin")
    with pytest.raises(CheckpointError) as err:
        VideoPanda.from_pretrained(directory)
    assert "missing: model.video_tower.balance" in str(err.value)
    assert "unexpected: model.video_tower.balance_renamed" in str(err.value)


def test_wrong_shape_is_named(tiny_model, tiny_checkpoint: Path, tmp_path: Path) -> None:
    state = dict(tiny_model.official_state_dict())
    state["model.video_projector.0.bias"] = torch.zeros(7)
    directory = _copy_meta(tiny_checkpoint, tmp_path / "shape")
    torch.save(state, directory / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match=r"wrong shape: model.video_projector.0.bias \(7,\)"):
        VideoPanda.from_pretrained(directory)


class _NotAWeight:
    pass


def test_pickled_objects_are_refused(tiny_checkpoint: Path, tmp_path: Path) -> None:
    """`torch.load(weights_only=True)`: a .bin carrying arbitrary objects is not unpickled."""
    directory = _copy_meta(tiny_checkpoint, tmp_path / "evil")
    torch.save({"model.embed_tokens.weight": _NotAWeight()}, directory / "pytorch_model.bin")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        VideoPanda.from_pretrained(directory)


def test_broken_inputs(tiny_checkpoint: Path, tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="no such checkpoint directory"):
        VideoPanda.from_pretrained(tmp_path / "nope")
    with pytest.raises(CheckpointError, match=r"no config\.json"):
        VideoPanda.from_pretrained(tmp_path)
    directory = _copy_meta(tiny_checkpoint, tmp_path / "noweights")
    with pytest.raises(CheckpointError, match="no weights found"):
        VideoPanda.from_pretrained(directory)
    (directory / "model.safetensors").write_bytes(b"garbage")
    with pytest.raises(CheckpointError, match="cannot read weights"):
        VideoPanda.from_pretrained(directory)


def test_official_config_without_preprocessor_file(tmp_path: Path) -> None:
    """A downloaded checkpoint names the official tower folder and carries no preprocessor config."""
    config = {
        "model_type": "videopanda",
        "hidden_size": 4096,
        "intermediate_size": 11008,
        "num_hidden_layers": 32,
        "num_attention_heads": 32,
        "vocab_size": 32000,
        "rms_norm_eps": 1e-5,
        "mm_projector_type": "mlp2x_gelu",
        "mm_video_tower": "videopanda/config/videopanda-video-LB-patch14-anypixel-448",
        "video_hidden_size": 1024,
    }
    (tmp_path / "config.json").write_text(json.dumps(config))
    read = read_config(tmp_path)
    assert read.vision.image_size == 448 and read.vision.conv_stride == 2 and read.vision.dec_heads == 8
    assert read.llm.num_key_value_heads == 32
    config["mm_video_tower"] = "somewhere/unknown-tower"
    (tmp_path / "config.json").write_text(json.dumps(config))
    with pytest.raises(CheckpointError, match=r"place the tower.s preprocessor_config\.json"):
        read_config(tmp_path)
