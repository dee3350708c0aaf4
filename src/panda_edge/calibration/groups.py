"""Layer groups of the STAB + projector graph: the units that mixed precision keeps in float or not.

Data only, like the profiles: each group names the ONNX node-name prefixes it owns (the exporter
names nodes by module scope, `/local_attention/kv/kv.1/MatMul`). A quantizable node no prefix
claims falls in `other`, so a new module is quantized and reported rather than silently skipped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass


@dataclass(frozen=True)
class LayerGroup:
    name: str
    description: str
    prefixes: tuple[str, ...]


GROUPS: tuple[LayerGroup, ...] = (
    LayerGroup("patch_embed", "patch embedding (Conv2d, 14x14 stride 14)", ("/patch_embedding/",)),
    LayerGroup("lmhra", "LSTE local temporal MHRA (1x1x1, depthwise 3x1x1, 1x1x1 Conv3d)", ("/lmhra/",)),
    LayerGroup("dpe", "LSTE depthwise 3x3x3 Conv3d position encoding", ("/dpe/",)),
    LayerGroup(
        "gstra_attn", "GSTRA cross-attention q/k/v and output projections", ("/dec/MatMul", "/dec/out_proj/")
    ),
    LayerGroup("gstra_mlp", "GSTRA MLP (c_fc, c_proj)", ("/dec/mlp/",)),
    LayerGroup("lsd", "LSD window attention (q, kv, proj)", ("/local_attention/",)),
    LayerGroup("fsra", "FSRA frame attention (q, kv, proj)", ("/global_attention/",)),
    LayerGroup("context_proj", "context-token projection (proj.2)", ("/proj/",)),
    LayerGroup("projector_fc1", "projector first Linear (width -> LLM hidden)", ("/projector/projector.0/",)),
    LayerGroup(
        "projector_fc2", "projector second Linear (LLM hidden -> LLM hidden)", ("/projector/projector.2/",)
    ),
    LayerGroup("projector", "projector Linear layers of other projector types", ("/projector/",)),
)
OTHER = LayerGroup("other", "quantizable nodes outside the known modules", ("",))
GROUP_NAMES = (*(g.name for g in GROUPS), OTHER.name)


def group_of(node_name: str) -> LayerGroup:
    """The first group whose prefix starts `node_name`; `other` when none does."""
    return next((g for g in GROUPS if node_name.startswith(g.prefixes)), OTHER)


def group_nodes(node_names: Iterable[str]) -> dict[str, list[str]]:
    """{group name: its node names}, groups in table order, only the groups that have nodes."""
    grouped: dict[str, list[str]] = {name: [] for name in GROUP_NAMES}
    for name in node_names:
        grouped[group_of(name).name].append(name)
    return {name: nodes for name, nodes in grouped.items() if nodes}
