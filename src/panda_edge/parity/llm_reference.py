"""The transformers reference for LLM parity: the checkpoint's LlamaForCausalLM alone.

Its logits are computed for every sequence and the model is freed before llama.cpp loads a GGUF: at
7B the two do not fit in memory together (13.5 GB of float16 weights each).
"""

from __future__ import annotations

import gc
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from panda_edge.model.loading import ReferencePrecision


def reference_logits(
    checkpoint: str | Path,
    sequences: Sequence[Sequence[int]],
    precision: ReferencePrecision | None = None,
    on_sequence: Callable[[int], None] | None = None,
) -> list[np.ndarray]:
    """(len(ids), vocab) float32 logits per sequence (eager attention, no cache)."""
    import torch

    from panda_edge.model.videopanda import load_llm_reference

    precision = precision or ReferencePrecision()
    longest = max((len(s) for s in sequences), default=1)
    model = load_llm_reference(checkpoint, precision, tokens=longest)
    out = []
    with torch.inference_mode():
        for i, ids in enumerate(sequences):
            ids_tensor = torch.tensor([list(ids)], device=precision.device)
            out.append(model(ids_tensor, use_cache=False).logits[0].float().cpu().numpy())
            if on_sequence is not None:
                on_sequence(i + 1)
    del model
    gc.collect()
    return out
