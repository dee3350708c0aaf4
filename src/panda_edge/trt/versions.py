"""Parsing TensorRT versions and the target each one builds (no TensorRT).

The targets themselves (graph profile, typing, flags per precision) are data in
`panda_edge.backends.TRT_TARGETS`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from panda_edge.backends import TRT_TARGETS, TrtTarget
from panda_edge.errors import PandaError


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


def family_for(version: TrtVersion | str) -> TrtTarget:
    """The target an installed TensorRT builds; older than 8.5, 9.x and unknown majors are refused."""
    version = version if isinstance(version, TrtVersion) else TrtVersion.parse(version)
    family = next((t for t in TRT_TARGETS.values() if t.major == str(version.major)), None)
    if family is not None and (version.major, version.minor) >= (8, 5):
        return family
    raise TrtUnsupported(
        f"TensorRT {version} is not supported: panda-edge builds engines with TensorRT 8.5/8.6 "
        "(JetPack 5), 10.x (JetPack 6) or 11.x"
    )
