"""Write `StabForOnnx` to an ONNX file for one TensorRT profile (TorchScript exporter, weights inline).

The TorchScript exporter (`dynamo=False`) is used because it writes opset 17 for TensorRT 8.5 and
10, and a single file; the graph it writes gets two repairs and the layout metadata here.
"""

from __future__ import annotations

import warnings
from collections import Counter
from contextlib import nullcontext
from dataclasses import dataclass
from pathlib import Path

import onnx
import torch
from torch import nn

from panda_edge import __version__
from panda_edge.backends import TrtTarget, trt_target
from panda_edge.model.stab import STAB
from panda_edge.model.static_stab import StabForOnnx, primitive_layer_norms
from panda_edge.token_layout import FRAMES, METADATA_KEY, VISUAL_TOKENS, TokenLayout


@dataclass(frozen=True)
class ExportedGraph:
    path: Path
    profile: str
    opset: int
    layout: TokenLayout
    operators: dict[str, int]

    @property
    def input_shape(self) -> tuple[int, ...]:
        return self.layout.frames_shape

    @property
    def output_shape(self) -> tuple[int, ...]:
        return self.layout.tokens_shape


def example_frames(layout: TokenLayout, seed: int = 0) -> torch.Tensor:
    """Tracing input. The graph has no data-dependent branches, so any values give the same graph."""
    generator = torch.Generator().manual_seed(seed)
    frames = torch.randn(layout.frames_shape, generator=generator)
    frames[:, 3] = 1.0
    return frames


def export_graph(
    stab: STAB, projector: nn.Module, path: str | Path, profile: TrtTarget | str
) -> ExportedGraph:
    """Export STAB + projector (eval mode, lmhra1's BatchNorm folded) to `path` for `profile`."""
    profile = trt_target(profile) if isinstance(profile, str) else profile
    path = Path(path)
    module = StabForOnnx(stab, projector)
    layout = module.layout()
    decompose = nullcontext() if profile.layer_norm_op else primitive_layer_norms(module)
    with torch.no_grad(), decompose, warnings.catch_warnings():
        # The TorchScript exporter is deprecated upstream; it is the one that still writes opset 17.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", torch.jit.TracerWarning)
        torch.onnx.export(
            module,
            (example_frames(layout),),
            str(path),
            dynamo=False,
            opset_version=profile.opset,
            input_names=[FRAMES],
            output_names=[VISUAL_TOKENS],
            do_constant_folding=True,
            export_params=True,
        )
    model = onnx.load(str(path))
    fix_negative_transpose_perms(model.graph)
    remove_identities(model.graph)
    declare_shape(model.graph.output[0], layout.tokens_shape)
    set_metadata(
        model,
        {
            METADATA_KEY: layout.to_json(),
            "panda_edge.profile": profile.profile,
            "panda_edge.version": __version__,
        },
    )
    onnx.save(model, str(path))
    operators = Counter(node.op_type for node in model.graph.node)
    return ExportedGraph(path, profile.profile, profile.opset, layout, dict(sorted(operators.items())))


def fix_negative_transpose_perms(graph: onnx.GraphProto) -> int:
    """`movedim(-3, 0)` exports as Transpose(perm=[-3, ...]), which ONNX forbids (TensorRT and ONNX
    shape inference reject it; ONNX Runtime happens to accept it). Wrap such perms to positive axes."""
    fixed = 0
    for node in graph.node:
        if node.op_type != "Transpose":
            continue
        for attr in node.attribute:
            if attr.name == "perm" and any(p < 0 for p in attr.ints):
                rank = len(attr.ints)
                perm = [p % rank for p in attr.ints]
                del attr.ints[:]
                attr.ints.extend(perm)
                fixed += 1
    return fixed


def remove_identities(graph: onnx.GraphProto) -> int:
    """Equal weights (the official zero inits, before training) are exported once plus Identity
    copies; TensorRT's operator lists need not hold Identity, so consumers read the source instead."""
    outputs = {value.name for value in graph.output}
    alias: dict[str, str] = {}
    kept = []
    for node in graph.node:
        if node.op_type == "Identity" and node.output[0] not in outputs:
            alias[node.output[0]] = alias.get(node.input[0], node.input[0])
        else:
            kept.append(node)
    for node in kept:
        for i, name in enumerate(node.input):
            if name in alias:
                node.input[i] = alias[name]
    del graph.node[:]
    graph.node.extend(kept)
    return len(alias)


def declare_shape(value: onnx.ValueInfoProto, shape: tuple[int, ...]) -> None:
    """The exporter leaves the output's dims symbolic (`Addvisual_tokens_dim_0`, ...) although every
    size is fixed; write them down. The checker's strict shape inference fails if they disagree."""
    dims = value.type.tensor_type.shape.dim
    if len(dims) != len(shape):
        raise ValueError(f"'{value.name}' has rank {len(dims)}, expected {len(shape)}")
    for dim, size in zip(dims, shape, strict=True):
        dim.Clear()
        dim.dim_value = size


def set_metadata(model: onnx.ModelProto, values: dict[str, str]) -> None:
    onnx.helper.set_model_props(model, {**{p.key: p.value for p in model.metadata_props}, **values})
    model.producer_name = "panda-edge"
    model.producer_version = __version__
