"""The fp32 transformers reference for LLM parity: the checkpoint's LlamaForCausalLM alone."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np


def reference_logits(checkpoint: str | Path) -> tuple[Callable[[Sequence[int]], np.ndarray], Path]:
    """A function ids -> fp32 logits (eager attention, no cache), and the tokenizer.model path."""
    import torch
    from transformers import LlamaForCausalLM

    from panda_edge.config import read_config
    from panda_edge.export.llm_gguf.names import SKIP_PREFIXES, SKIP_SUFFIXES
    from panda_edge.export.llm_gguf.pipeline import _resolve
    from panda_edge.model.checkpoint import TOKENIZER_FILE, read_weights
    from panda_edge.model.videopanda import llama_config

    directory = _resolve(checkpoint)
    config = llama_config(read_config(directory).llm)
    config._attn_implementation = "eager"
    model = LlamaForCausalLM(config)
    state = {
        k: v.float()
        for k, v in read_weights(directory).items()
        if not k.startswith(SKIP_PREFIXES) and not k.endswith(SKIP_SUFFIXES)
    }
    model.load_state_dict(state, strict=True)
    model.eval()

    @torch.inference_mode()
    def logits(ids: Sequence[int]) -> np.ndarray:
        return model(torch.tensor([list(ids)]), use_cache=False).logits[0].float().numpy()

    return logits, directory / TOKENIZER_FILE
