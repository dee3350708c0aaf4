"""`panda plan`: will a bundle (or a preset) fit a device, and how fast can it decode there (no torch).

`devices` (memory and bandwidth per device), `ggml` (GGUF bytes per tensor type, llama.cpp's
K-quant mixes), `vision` (STAB + projector parameters, engine memory), `footprint` (the plan).
"""
