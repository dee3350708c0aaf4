"""What each TensorRT family needs to build our graphs: data plus version parsing, no TensorRT.

- 8.5 / 8.6 (JetPack 5.x ships 8.5, JetPack 6.0 ships 8.6): weakly typed; precision comes from
  builder flags (FP16; a Q/DQ graph needs INT8, with FP16 allowed for the float parts); the ONNX
  parser needs EXPLICIT_BATCH.
- 10.x (JetPack 6.1 and 6.2 ship 10.3): built strongly typed, so every tensor keeps the graph's
  type: fp16 comes from the fp16 graph, INT8 from the Q/DQ graph; no precision flags.
- 11.x: always strongly typed; the precision flags and `trtexec --fp16/--int8` are gone.

Each family reads the graphs exported for its own profile (`export/stab_onnx/profiles.py`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from panda_edge.errors import PandaError

PRECISIONS = ("fp16", "int8", "fp32")
# Which manifest entry holds the graph for a precision, per family kind (weakly / strongly typed).
_WEAK_GRAPHS = {"fp32": "vision", "fp16": "vision", "int8": "vision_int8"}
_STRONG_GRAPHS = {"fp32": "vision", "fp16": "vision_fp16", "int8": "vision_int8"}


class TrtUnsupported(PandaError):
    """The installed TensorRT is not one panda-edge builds for."""


@dataclass(frozen=True, order=True)
class TrtVersion:
    major: int
    minor: int
    patch: int = 0
    build: int | None = None

    @classmethod
    def parse(cls, text: str) -> TrtVersion:
        """'8.5.2.2', '10.3.0', '11.0' (a version string), or '8502' / '100300' (NV_TENSORRT_VERSION)."""
        text = str(text).strip().lstrip("v")
        if re.fullmatch(r"\d{4,6}", text):
            code = int(text)
            if code >= 10000:  # TensorRT 10+: major * 10000 + minor * 100 + patch
                return cls(code // 10000, code // 100 % 100, code % 100)
            return cls(code // 1000, code // 100 % 10, code % 100)  # 8.x: major * 1000 + minor * 100 + patch
        match = re.fullmatch(r"(\d+)\.(\d+)(?:\.(\d+))?(?:\.(\d+))?(?:[.+-].*)?", text)
        if not match:
            raise PandaError(f"'{text}' is not a TensorRT version")
        major, minor, patch, build = match.groups()
        return cls(int(major), int(minor), int(patch or 0), int(build) if build is not None else None)

    @property
    def release(self) -> str:
        """major.minor.patch: what an engine's compatibility depends on (trtexec logs only this)."""
        return f"{self.major}.{self.minor}.{self.patch}"

    def __str__(self) -> str:
        return self.release if self.build is None else f"{self.release}.{self.build}"


@dataclass(frozen=True)
class Family:
    """One TensorRT generation: the graph profile it builds and how precision is asked for."""

    name: str
    profile: str  # export/stab_onnx/profiles.py
    platform: str
    strongly_typed: bool
    network_flags: tuple[str, ...]  # trt.NetworkDefinitionCreationFlag names
    builder_flags: dict[str, tuple[str, ...]]  # precision -> trt.BuilderFlag names
    trtexec_flags: dict[str, tuple[str, ...]]  # precision -> trtexec options
    graphs: dict[str, str]  # precision -> manifest key of the graph to build

    @property
    def label(self) -> str:
        return f"TensorRT {self.name}.x"


FAMILIES: dict[str, Family] = {
    "8": Family(
        name="8",
        profile="8.5",
        platform="JetPack 5.x and 6.0 (TensorRT 8.5 / 8.6)",
        strongly_typed=False,
        network_flags=("EXPLICIT_BATCH",),
        builder_flags={"fp32": (), "fp16": ("FP16",), "int8": ("INT8", "FP16")},
        trtexec_flags={"fp32": (), "fp16": ("--fp16",), "int8": ("--int8", "--fp16")},
        graphs=_WEAK_GRAPHS,
    ),
    "10": Family(
        name="10",
        profile="10",
        platform="JetPack 6.1 / 6.2 (TensorRT 10.3)",
        strongly_typed=True,
        network_flags=("STRONGLY_TYPED",),
        builder_flags={p: () for p in PRECISIONS},
        trtexec_flags={p: ("--stronglyTyped",) for p in PRECISIONS},
        graphs=_STRONG_GRAPHS,
    ),
    "11": Family(
        name="11",
        profile="11",
        platform="desktop and server GPUs (TensorRT 11)",
        strongly_typed=True,
        network_flags=(),  # always strongly typed
        builder_flags={p: () for p in PRECISIONS},
        trtexec_flags={p: () for p in PRECISIONS},
        graphs=_STRONG_GRAPHS,
    ),
}


def family_for(version: TrtVersion | str) -> Family:
    """The family of an installed TensorRT; older than 8.5, 9.x and unknown majors are refused."""
    version = version if isinstance(version, TrtVersion) else TrtVersion.parse(version)
    family = FAMILIES.get(str(version.major))
    if family is not None and (version.major, version.minor) >= (8, 5):
        return family
    raise TrtUnsupported(
        f"TensorRT {version} is not supported: panda-edge builds engines with TensorRT 8.5/8.6 "
        "(JetPack 5), 10.x (JetPack 6) or 11.x"
    )


def family_for_profile(profile: str) -> Family:
    for family in FAMILIES.values():
        if family.profile == str(profile):
            return family
    raise PandaError(f"no TensorRT family builds graphs of profile '{profile}'")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise PandaError(f"unknown precision '{precision}'; choose one of: {', '.join(PRECISIONS)}")
    return precision
