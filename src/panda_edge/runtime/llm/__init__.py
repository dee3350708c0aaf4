"""The language side of the runtime: llama.cpp on a bundle's GGUF (no torch)."""

from panda_edge.runtime.llm.llamacpp import LlamaCppModel

__all__ = ["LlamaCppModel"]
