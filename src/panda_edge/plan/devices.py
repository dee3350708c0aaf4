"""Devices the planner knows: memory, memory bandwidth, and whether CPU and GPU share the memory.

Memory in GiB as sold (an "8GB" module holds 8 GiB); bandwidth in GB/s (1e9 bytes/s) from NVIDIA's
module data sheets and GPU specifications. On Jetson the memory is unified: the OS, its carveouts
and the desktop come out of the same pool (`reserve_gib`, about 2 GiB with the desktop running;
a headless system needs less, see `panda plan --reserve-gib`). A discrete GPU keeps a little for
the driver and display.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

from panda_edge.errors import PandaError

JETSON_RESERVE_GIB = 2.0
DISCRETE_RESERVE_GIB = 0.5


@dataclass(frozen=True)
class Device:
    name: str
    label: str
    memory_gib: float
    bandwidth_gb_s: float
    unified: bool
    compute_capability: str | None
    reserve_gib: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _jetson(name: str, label: str, memory: float, bandwidth: float) -> Device:
    return Device(name, label, memory, bandwidth, True, "8.7", JETSON_RESERVE_GIB)


def _gpu(name: str, label: str, memory: float, bandwidth: float, capability: str) -> Device:
    return Device(name, label, memory, bandwidth, False, capability, DISCRETE_RESERVE_GIB)


DEVICES: dict[str, Device] = {
    d.name: d
    for d in (
        _jetson("orin-nano-4gb", "Jetson Orin Nano 4GB", 4, 34),
        _jetson("orin-nano-8gb", "Jetson Orin Nano 8GB", 8, 68),
        _jetson("orin-nano-8gb-super", "Jetson Orin Nano 8GB (Super mode, JetPack 6.2)", 8, 102),
        _jetson("orin-nx-8gb", "Jetson Orin NX 8GB", 8, 102.4),
        _jetson("orin-nx-16gb", "Jetson Orin NX 16GB", 16, 102.4),
        _jetson("agx-orin-32gb", "Jetson AGX Orin 32GB", 32, 204.8),
        _jetson("agx-orin-64gb", "Jetson AGX Orin 64GB", 64, 204.8),
        _gpu("t4", "NVIDIA T4 16GB", 16, 320, "7.5"),
        _gpu("rtx-3060-12gb", "GeForce RTX 3060 12GB", 12, 360, "8.6"),
        _gpu("rtx-3090", "GeForce RTX 3090 24GB", 24, 936, "8.6"),
        _gpu("rtx-4060-ti-16gb", "GeForce RTX 4060 Ti 16GB", 16, 288, "8.9"),
        _gpu("rtx-4090", "GeForce RTX 4090 24GB", 24, 1008, "8.9"),
        _gpu("l4", "NVIDIA L4 24GB", 24, 300, "8.9"),
        _gpu("a100-40gb", "NVIDIA A100 40GB (SXM)", 40, 1555, "8.0"),
        _gpu("a100-80gb", "NVIDIA A100 80GB (SXM)", 80, 2039, "8.0"),
        _gpu("h100-80gb", "NVIDIA H100 80GB (SXM)", 80, 3350, "9.0"),
        _gpu("h200", "NVIDIA H200 141GB (SXM)", 141, 4800, "9.0"),
    )
}


CPU_RESERVE_GIB = 1.0  # the OS, its page cache floor and a shell: a machine's memory a job cannot take


def this_machine() -> Device:
    """`--device cpu`: this machine as the device (ONNX Runtime + llama.cpp on its CPU), its memory
    read from /proc/meminfo and its bandwidth measured (a 512 MiB copy), so the plan can be checked
    against `panda run`'s peak RSS here."""
    from pathlib import Path

    from panda_edge.host import cpu_info, memory_bandwidth_gbs

    total_kib = 0
    for line in Path("/proc/meminfo").read_text().splitlines():
        if line.startswith("MemTotal:"):
            total_kib = int(line.split()[1])
    name, _ = cpu_info()
    memory_gib, bandwidth = total_kib / 2**20, memory_bandwidth_gbs()
    return Device("cpu", f"this machine ({name})", memory_gib, bandwidth, True, None, CPU_RESERVE_GIB)


def get_device(
    name: str,
    memory_gib: float | None = None,
    bandwidth_gb_s: float | None = None,
    unified: bool | None = None,
    reserve_gib: float | None = None,
) -> Device:
    """A known device, with any given value overriding its own; `custom` needs memory and bandwidth."""
    if name == "custom":
        if memory_gib is None or bandwidth_gb_s is None:
            raise PandaError("--device custom needs --memory-gib and --bandwidth-gbs")
        is_unified = bool(unified)
        base = Device(
            "custom",
            "custom device",
            memory_gib,
            bandwidth_gb_s,
            is_unified,
            None,
            JETSON_RESERVE_GIB if is_unified else DISCRETE_RESERVE_GIB,
        )
    elif name in DEVICES:
        base = DEVICES[name]
    elif name == "cpu":
        base = this_machine()
    else:
        raise PandaError(f"unknown device '{name}'; choose one of: {', '.join(DEVICES)}, cpu, custom")
    values = {
        "memory_gib": memory_gib,
        "bandwidth_gb_s": bandwidth_gb_s,
        "unified": unified,
        "reserve_gib": reserve_gib,
    }
    changes = {k: v for k, v in values.items() if v is not None}
    for key in ("memory_gib", "bandwidth_gb_s"):
        if key in changes and changes[key] <= 0:
            raise PandaError(f"--{key.replace('_', '-').replace('-gb-s', '-gbs')} must be positive")
    if changes.get("reserve_gib", 0) < 0:
        raise PandaError("--reserve-gib cannot be negative")
    return Device(**{**asdict(base), **changes})
