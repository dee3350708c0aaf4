"""STAB + projector -> ONNX: real exports run by ONNX Runtime against the PyTorch reference, per profile."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from onnx import TensorProto, helper
from tests.conftest import random_tiny_model
from torch import nn

import panda_edge
from panda_edge.backends import TRT_TARGETS as PROFILES
from panda_edge.config import PRESETS
from panda_edge.errors import PandaError
from panda_edge.export.stab_onnx.check import check_onnx
from panda_edge.export.stab_onnx.convert import export_graph
from panda_edge.model.static_stab import fold_batchnorm, primitive_layer_norms
from panda_edge.model.vision import VisionTower
from panda_edge.parity.clips import write_parity_clips
from panda_edge.parity.compare import LEVELS, compare_tokens
from panda_edge.runtime.vision import OrtVisionEngine, TorchVisionReference
from panda_edge.video import load_video
from panda_edge.video.preprocess import frame_geometry, padding_frame_tokens

TINY = PRESETS["tiny"]
STAB_FP32 = LEVELS["stab_fp32"]

# (frames, width, height): square, 16:9, 9:16, 5 frames (3 all-padding frames), and a wide clip
# whose real patches start at an offset window (the tiny model's 16:9 crop starts at 0).
CLIPS = {
    "square": (16, 96, 96),
    "16x9": (16, 160, 90),
    "9x16": (16, 90, 160),
    "5_frames": (5, 160, 90),
    "wide_offset": (16, 160, 64),
}


@pytest.fixture(scope="module", params=list(PROFILES))
def tiny_engine(request, tiny_model, tmp_path_factory):
    """The random tiny model exported for one profile, open in ONNX Runtime."""
    path = tmp_path_factory.mktemp(f"onnx-{request.param}") / "stab.onnx"
    export_graph(tiny_model.stab, tiny_model.projector, path, request.param)
    with OrtVisionEngine(path) as engine:
        yield request.param, path, engine


@pytest.fixture(scope="module")
def tiny_reference(tiny_model):
    with TorchVisionReference(tiny_model) as reference:
        yield reference


def expected_counts(frames: int, width: int, height: int, vision=TINY.vision) -> list[int]:
    real = min(frames, vision.video_frames)
    per_frame = frame_geometry(width, height, vision).tokens_per_frame(vision)
    return [per_frame] * real + [padding_frame_tokens(vision)] * (vision.video_frames - real)


@pytest.mark.parametrize("clip", list(CLIPS))
def test_stab_fp32_parity_per_profile(tiny_engine, tiny_reference, make_video, clip: str) -> None:
    _, _, engine = tiny_engine
    n, width, height = CLIPS[clip]
    frames = load_video(make_video(f"{clip}.mp4", n=n, width=width, height=height), TINY.vision)
    reference, candidate = tiny_reference.encode(frames), engine.encode(frames)
    assert [len(t) for t in candidate] == [len(t) for t in reference] == expected_counts(n, width, height)
    result = compare_tokens(reference, candidate, clip, STAB_FP32)
    assert result, str(result)
    assert result.cosine_min >= 0.99999 and result.max_abs_rel <= 1e-3  # docs/design.md §5
    # Regression guard near what is measured (max_abs_rel 5.8e-7 to 7.7e-7, 1 - cosine_min < 1e-12).
    assert result.max_abs_rel <= 1e-5 and result.cosine_min >= 1 - 1e-9


def test_exported_graph_passes_its_profile_checks(tiny_engine) -> None:
    profile, path, _ = tiny_engine
    assert check_onnx(path, profile) == []
    model = onnx.load(str(path))
    ops = {n.op_type for n in model.graph.node}
    assert model.opset_import[0].version == PROFILES[profile].opset
    assert ("LayerNormalization" in ops) == PROFILES[profile].layer_norm_op
    assert "BatchNormalization" not in ops  # folded into the 1x1x1 conv
    assert [d.dim_value for d in model.graph.input[0].type.tensor_type.shape.dim] == [8, 4, 112, 112]
    assert [d.dim_value for d in model.graph.output[0].type.tensor_type.shape.dim] == [
        8,
        1 + 4 * 5,
        PRESETS["tiny"].llm.hidden_size,
    ]


def test_static_graph_equals_its_pytorch_module_everywhere(tiny_engine, tiny_reference, make_video) -> None:
    """`infer` on both backends: the full-grid output, including tokens the runtime later drops."""
    _, _, engine = tiny_engine
    frames = load_video(make_video("clip.mp4", n=5, width=160, height=64), TINY.vision)
    ort_tokens = engine.infer({"frames": frames})["visual_tokens"]
    torch_tokens = tiny_reference.infer({"frames": frames})["visual_tokens"]
    assert ort_tokens.shape == torch_tokens.shape == (8, 21, PRESETS["tiny"].llm.hidden_size)
    np.testing.assert_allclose(ort_tokens, torch_tokens, rtol=0, atol=1e-4 * np.abs(torch_tokens).max())


def test_check_reports_layer_norm_op_under_8_5(tiny_model, tmp_path: Path) -> None:
    path = tmp_path / "stab10.onnx"
    export_graph(tiny_model.stab, tiny_model.projector, path, "10")
    problems = check_onnx(path, "8.5")
    assert len(problems) == 1 and "operator LayerNormalization" in problems[0] and "8.5" in problems[0]


def _graph(tmp_path: Path, name: str, x_dims: list, opset: int = 17, op: str = "Sigmoid") -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, x_dims)
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, x_dims)
    model = helper.make_model(
        helper.make_graph([helper.make_node(op, ["x"], ["y"])], name, [x], [y]),
        opset_imports=[helper.make_opsetid("", opset)],
    )
    path = tmp_path / f"{name}.onnx"
    onnx.save(model, str(path))
    return path


def test_check_reports_dynamic_dims_opset_and_operators(tmp_path: Path) -> None:
    assert check_onnx(_graph(tmp_path, "ok", [2, 4]), "8.5") == []
    problems = check_onnx(_graph(tmp_path, "dynamic", ["batch", 4]), "11")
    assert "input 'x' has a dynamic shape (batch, 4)" in problems
    assert "output 'y' has a dynamic shape (batch, 4)" in problems
    assert any(
        "opset 18 is above 17" in p for p in check_onnx(_graph(tmp_path, "new", [2, 4], opset=18), "10")
    )
    assert any("operator Relu" in p for p in check_onnx(_graph(tmp_path, "relu", [2, 4], op="Relu"), "10"))


def test_check_reports_data_dependent_intermediate_shapes(tmp_path: Path) -> None:
    """Reshape to a shape computed from the data: the graph's I/O is static, a value inside is not."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [8])
    nodes = [
        helper.make_node("ReduceMax", ["x"], ["m"], axes=[1], keepdims=0),  # (2,): values known at run time
        helper.make_node("Cast", ["m"], ["shape"], to=TensorProto.INT64),
        helper.make_node("Reshape", ["x", "shape"], ["r"]),
        helper.make_node("Flatten", ["r"], ["f"], axis=0),
        helper.make_node("Squeeze", ["f"], ["y"]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "data_dependent", [x], [y]), opset_imports=[helper.make_opsetid("", 17)]
    )
    path = tmp_path / "dd.onnx"
    onnx.save(model, str(path))
    problems = check_onnx(path, "11")
    assert any("intermediate value(s) with a non-static shape" in p and "; f (1, " in p for p in problems)


def test_fold_batchnorm_is_exact() -> None:
    """In float64 the folded conv equals BN -> conv to rounding; in float32 it stays within 1e-5."""
    torch.manual_seed(0)
    bn, conv = nn.BatchNorm3d(12), nn.Conv3d(12, 8, kernel_size=1)
    with torch.no_grad():
        for p in (*bn.parameters(), *conv.parameters()):
            p.normal_(0, 0.7)
        bn.running_mean.normal_(0, 0.5)
        bn.running_var.uniform_(0.2, 2.0)
    bn.eval()
    x = torch.randn(2, 12, 4, 5, 3, dtype=torch.float64) * 3
    with torch.no_grad():
        folded32 = fold_batchnorm(bn, conv)
        torch.testing.assert_close(folded32(x.float()), conv(bn(x.float())), rtol=1e-5, atol=1e-5)
        bn64, conv64 = bn.double(), conv.double()
        folded64 = fold_batchnorm(bn64, conv64)
        assert folded64.weight.dtype == torch.float64 and folded32.weight.dtype == torch.float32
        assert (folded64(x) - conv64(bn64(x))).abs().max() < 1e-12
    with pytest.raises(ValueError, match="1x1x1"):
        fold_batchnorm(bn, nn.Conv3d(12, 8, kernel_size=3, padding=1))


def test_primitive_layer_norm_matches_and_restores() -> None:
    torch.manual_seed(0)
    block = nn.Sequential(nn.Linear(16, 16), nn.LayerNorm(16))
    with torch.no_grad():
        block[1].weight.normal_(1, 0.5)
        block[1].bias.normal_(0, 0.5)
    x = torch.randn(3, 5, 16) * 4 + 2
    with torch.no_grad():
        expected = block(x)
        with primitive_layer_norms(block):
            assert "forward" in vars(block[1])
            decomposed = block(x)
    assert "forward" not in vars(block[1])
    torch.testing.assert_close(decomposed, expected, rtol=1e-5, atol=1e-5)


def test_runtime_refuses_masks_the_graph_cannot_match(tiny_engine) -> None:
    _, _, engine = tiny_engine
    frames = np.zeros((8, 4, 112, 112), dtype=np.float32)
    frames[:, 3, 14:] = 1.0  # real pixels start at patch row 1, inside an LSD window
    with pytest.raises(PandaError, match="not on the 2-patch LSD window grid"):
        engine.encode(frames)
    frames[:, 3] = 1.0
    frames[:, 3, :28, :28] = 0.0  # an L shape, not a rectangle
    with pytest.raises(PandaError, match="do not form a rectangle"):
        engine.encode(frames)
    with pytest.raises(PandaError, match="shape"):
        engine.encode(frames[:5])


def test_padding_frames_keep_the_top_left_square(tokenizer_file: Path, make_video, tmp_path: Path) -> None:
    """pad_frame_patches smaller than the grid: padding frames keep 2x2 of the 4x4 windows."""
    config = dataclasses.replace(TINY, vision=dataclasses.replace(TINY.vision, pad_frame_patches=4))
    model = random_tiny_model(tokenizer_file, config=config, seed=3)
    path = tmp_path / "stab.onnx"
    export_graph(model.stab, model.projector, path, "11")
    frames = load_video(make_video("five.mp4", n=5, width=96, height=96), config.vision)
    with TorchVisionReference(model) as reference, OrtVisionEngine(path) as engine:
        expected, got = reference.encode(frames), engine.encode(frames)
    assert [len(t) for t in got] == [len(t) for t in expected] == [21] * 5 + [1 + 2 * 3] * 3
    assert compare_tokens(expected, got, "five", STAB_FP32)


def test_vision_tower_loads_only_vision_weights_and_matches(tiny_model, tiny_checkpoint: Path) -> None:
    tower = VisionTower.from_checkpoint(tiny_checkpoint)
    frames = torch.from_numpy(np.random.default_rng(0).normal(size=(8, 4, 112, 112)).astype(np.float32))
    frames[:, 3] = 1.0
    with torch.no_grad():
        assert all(
            torch.equal(a, b)
            for a, b in zip(tower.encode_frames(frames), tiny_model.encode_frames(frames), strict=True)
        )


def test_ort_backend_runs_without_torch(tiny_engine, make_video) -> None:
    _, path, _ = tiny_engine
    video = make_video("clip.mp4", n=16, width=160, height=90)
    code = f"""
import sys
import panda_edge.runtime
from panda_edge.config import PRESETS
from panda_edge.runtime.vision import OrtVisionEngine
from panda_edge.video import load_video
frames = load_video({str(video)!r}, PRESETS["tiny"].vision)
with OrtVisionEngine({str(path)!r}) as engine:
    tokens = engine.encode(frames)
assert [len(t) for t in tokens] == [16] * 8, [len(t) for t in tokens]
assert "torch" not in sys.modules, "torch was imported"
print("ok")
"""
    env = {**os.environ, "PYTHONPATH": str(Path(panda_edge.__file__).parents[1])}
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_full_size_random_weights_16x9(tmp_path: Path) -> None:
    """The released geometry (448 px, width 1024, 4096-wide projector), random weights, profile 8.5:
    a 5-frame 16:9 clip, so real frames crop to an offset rectangle and padding frames to 16x16 patches."""
    start = time.perf_counter()
    config = PRESETS["full"]
    tower = VisionTower.random(config, seed=0)
    path = tmp_path / "stab.onnx"
    export_graph(tower.stab, tower.projector, path, "8.5")
    assert check_onnx(path, "8.5") == []
    (video,) = [p for p in write_parity_clips(tmp_path, 448) if p.name == "five_frames.mp4"]
    frames = load_video(video, config.vision)
    with TorchVisionReference(tower) as reference, OrtVisionEngine(path) as engine:
        expected, got = reference.encode(frames), engine.encode(frames)
    assert [len(t) for t in got] == [len(t) for t in expected] == [154] * 5 + [73] * 3
    result = compare_tokens(expected, got, "full 16:9", STAB_FP32)
    assert result, str(result)
    print(f"full-size export + parity: {time.perf_counter() - start:.1f} s, {result}")


def test_a_freshly_initialized_model_exports_without_identity_nodes(tmp_path: Path, make_video) -> None:
    """The official zero inits make equal weights, which the exporter shares through Identity nodes."""
    tower = VisionTower(PRESETS["tiny"]).eval()
    graph = export_graph(tower.stab, tower.projector, tmp_path / "stab.onnx", "11")
    assert "Identity" not in graph.operators
    assert check_onnx(tmp_path / "stab.onnx", PROFILES["11"]) == []
    frames = load_video(make_video(), tower.config.vision)
    with TorchVisionReference(tower) as reference, OrtVisionEngine(tmp_path / "stab.onnx") as ort:
        parity = compare_tokens(reference.encode(frames), ort.encode(frames), "clip", LEVELS["stab_fp32"])
    assert parity.passed, parity
