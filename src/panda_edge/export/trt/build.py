"""ONNX -> serialized engine through TensorRT's Python API (8.5 through 11), following a `Recipe`.

Written against NVIDIA's documented API; TensorRT cannot be installed where panda-edge is
developed, so the choices it makes (which graph, which flags) live in `trt/build_recipe` and
`backends.TRT_TARGETS` and are tested there, and this module only carries them out:
Builder -> create_network(flags) -> OnnxParser.parse_from_file -> builder config (workspace pool,
builder flags, timing cache) -> build_serialized_network.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from panda_edge.errors import CheckFailed, PandaError
from panda_edge.fileio import atomic_path
from panda_edge.trt.build_recipe import Recipe
from panda_edge.trt.device import tensorrt, trt_logger


class EngineBuildFailed(CheckFailed):
    """TensorRT refused the graph or found no kernels for it (exit 1: the build ran and failed)."""


def _flag_bits(enum: Any, names: tuple[str, ...]) -> int:
    bits = 0
    for name in names:
        bits |= 1 << int(getattr(enum, name))
    return bits


def build_serialized_engine(
    onnx_path: Path,
    recipe: Recipe,
    workspace_mb: int,
    timing_cache: Path | None = None,
    on_step: Callable[[str], None] | None = None,
) -> bytes:
    """The engine's bytes; the timing cache (read if present) is written back after the build."""
    trt = tensorrt()
    step = on_step or (lambda message: None)
    logger = trt_logger(trt)
    builder = trt.Builder(logger)
    network = builder.create_network(_flag_bits(trt.NetworkDefinitionCreationFlag, recipe.network_flags))
    parser = trt.OnnxParser(network, logger)
    step(f"parsing {onnx_path.name}")
    if not parser.parse_from_file(str(onnx_path)):
        errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
        raise EngineBuildFailed(f"TensorRT's ONNX parser rejects {onnx_path.name}: {errors}")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace_mb << 20)
    for name in recipe.builder_flags:
        config.set_flag(getattr(trt.BuilderFlag, name))
    cache_bytes = timing_cache.read_bytes() if timing_cache is not None and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, False)  # ignore_mismatch=False: a cache from another GPU is an error
    step(f"building the {recipe.precision} engine ({recipe.family.label}; this takes minutes)")
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EngineBuildFailed(f"TensorRT could not build {onnx_path.name} (see its log above)")
    if timing_cache is not None:
        with atomic_path(timing_cache) as tmp:
            tmp.write_bytes(bytes(memoryview(config.get_timing_cache().serialize())))
    return bytes(memoryview(serialized))


def inspect_engine(data: bytes) -> dict[str, Any]:
    """I/O tensors (shape, dtype) and activation memory of a serialized engine, by deserializing it."""
    trt = tensorrt()
    logger = trt_logger(trt)
    runtime = trt.Runtime(logger)  # must outlive the engine
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise PandaError("TensorRT could not deserialize the engine it was given (another version or GPU?)")
    try:
        inputs, outputs = {}, {}
        for i in range(engine.num_io_tensors):
            name = engine.get_tensor_name(i)
            spec = {
                "shape": [int(d) for d in engine.get_tensor_shape(name)],
                "dtype": str(trt.nptype(engine.get_tensor_dtype(name)).__name__),
            }
            (inputs if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT else outputs)[name] = spec
        memory = getattr(engine, "device_memory_size_v2", None)  # 10.x+; 8.5 has device_memory_size
        if memory is None:
            memory = engine.device_memory_size
        return {"inputs": inputs, "outputs": outputs, "device_memory_bytes": int(memory)}
    finally:
        del engine  # before the runtime
