"""Error types. The CLI maps them to exit codes; the library never exits the process."""

from __future__ import annotations


class PandaError(Exception):
    """Something the user caused (bad file, wrong bundle, bad argument): exit status 2."""

    exit_code = 2


class VideoError(PandaError):
    """The file is not a readable video."""


class CheckpointError(PandaError):
    """The checkpoint is missing, malformed or does not match the model."""


class CheckFailed(Exception):
    """A check the user asked for ran and did not pass (parity below threshold): exit status 1."""

    exit_code = 1


class MissingDependency(PandaError):
    """An optional package is needed for this command."""

    def __init__(self, package: str, extra: str) -> None:
        super().__init__(f"this needs the Python package '{package}': pip install 'panda-edge[{extra}]'")
        self.package = package
        self.extra = extra


class BundleError(PandaError):
    """The export bundle is missing, incomplete, altered or of another format version."""
