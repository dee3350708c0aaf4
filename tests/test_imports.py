"""Imports run one way: no module of panda_edge imports from a layer above its own.

Every module is read with `ast` (imports inside functions count: a lazy import is still a
dependency), mapped to its layer by its package (or, at the top level, its module name), and each
import of a higher layer is reported with its file and line. A new package or top-level module
fails here until it is placed in LAYERS.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

SRC = Path(__file__).resolve().parents[1] / "src"
PACKAGE = "panda_edge"

# Top to bottom: what each layer holds (packages and top-level modules of panda_edge).
LAYERS: tuple[tuple[str, frozenset[str]], ...] = (
    ("cli", frozenset({"cli", "serving", "scaleout"})),
    # Jobs that run models to measure or check them. Calibration is here, not beside export: it runs
    # graphs with the runtime's ONNX Runtime settings and judges them with parity's comparison.
    ("measure", frozenset({"parity", "bench", "calibration", "demo"})),
    ("runtime", frozenset({"runtime"})),
    # Writing a bundle, and sizing one for a device (the runtime checks memory with plan's arithmetic).
    ("export", frozenset({"export", "plan"})),
    ("model", frozenset({"model", "train"})),
    ("video", frozenset({"video", "toyworld"})),
    # Contracts and leaf utilities: the package root (its version), the bundle's formats (config,
    # bundle, prompt, token layout, TensorRT facts and engine records), errors, files, this machine.
    (
        "contracts",
        frozenset(
            {
                "",
                "assets",
                "backends",
                "bundle",
                "config",
                "errors",
                "fileio",
                "host",
                "memory",
                "optional",
                "prompt",
                "sampling",
                "timing",
                "token_layout",
                "trt",
            }
        ),
    ),
)
RANK = {name: len(LAYERS) - i for i, (_, names) in enumerate(LAYERS) for name in names}
LAYER_OF = {name: layer for layer, names in LAYERS for name in names}
# Downward imports that are still refused: a device carries the runtime without the exporter, and
# the exporter must not need the runtime. What both use lives in the contracts.
FORBIDDEN = {("runtime", "export"), ("export", "runtime")}


def module_name(path: Path) -> str:
    parts = path.relative_to(SRC).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _part(module: str) -> str:
    """The package or top-level module of panda_edge that `module` belongs to ('' for the root)."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def _is_package(module: str) -> bool:
    return (SRC / module.replace(".", "/") / "__init__.py").is_file()


def imported_modules(module: str, tree: ast.AST) -> list[tuple[int, str]]:
    """(line, module) for every panda_edge module that `module` imports, anywhere in its source."""
    found = []
    package = module if _is_package(module) else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - (node.level - 1)]
                base = ".".join([*anchor, *([base] if base else [])])
            if base == PACKAGE:  # from panda_edge import demo: the names are modules
                for alias in node.names:
                    name = f"{PACKAGE}.{alias.name}"
                    is_module = (SRC / PACKAGE / f"{alias.name}.py").is_file() or _is_package(name)
                    found.append((node.lineno, name if is_module else PACKAGE))
            else:
                found.append((node.lineno, base))
    return [(line, m) for line, m in found if m == PACKAGE or m.startswith(f"{PACKAGE}.")]


def import_problems(module: str, source: str, filename: str) -> list[str]:
    """Why `module`'s imports break the layering, one line each as `file:line: ...`; empty when none."""
    own = _part(module)
    if own not in RANK:
        return [f"{filename}:1: {module} belongs to no layer; place '{own}' in LAYERS ({__file__})"]
    problems = []
    for line, target in imported_modules(module, ast.parse(source, filename)):
        other = _part(target)
        if other not in RANK:
            problems.append(f"{filename}:{line}: {target} belongs to no layer; place '{other}' in LAYERS")
        elif RANK[other] > RANK[own]:
            problems.append(
                f"{filename}:{line}: {module} ({LAYER_OF[own]}) imports {target} "
                f"({LAYER_OF[other]}), a higher layer"
            )
        elif (own, other) in FORBIDDEN:
            problems.append(f"{filename}:{line}: {module} imports {target}: {own} must not import {other}")
    return problems


def test_no_module_imports_from_a_higher_layer() -> None:
    files = sorted((SRC / PACKAGE).rglob("*.py"))
    assert len(files) > 50
    problems = [
        p
        for path in files
        for p in import_problems(
            module_name(path), path.read_text(encoding="utf-8"), str(path.relative_to(SRC.parent))
        )
    ]
    assert not problems, "\n".join(problems)


def test_a_planted_upward_import_is_found_with_its_line() -> None:
    source = "import numpy\n\n\ndef late():\n    from panda_edge.parity.compare import LEVELS\n"
    (problem,) = import_problems("panda_edge.runtime.video_runtime", source, "pipeline.py")
    assert problem.startswith("pipeline.py:5: panda_edge.runtime.video_runtime (runtime) imports")
    assert "panda_edge.parity.compare (measure), a higher layer" in problem


@pytest.mark.parametrize(
    ("module", "source"),
    [
        ("panda_edge.runtime.vision.trt", "from panda_edge.export.trt import build\n"),
        ("panda_edge.export.stab_onnx.convert", "import panda_edge.runtime.vision.base\n"),
        ("panda_edge.config", "from panda_edge import demo\n"),
        ("panda_edge.video.decode", "from .. import model\n"),
        ("panda_edge.runtime.vision", "from ...export.trt import build\n"),
    ],
)
def test_each_kind_of_upward_or_forbidden_import_is_found(module: str, source: str) -> None:
    assert len(import_problems(module, source, "x.py")) == 1


def test_downward_and_sideways_imports_pass() -> None:
    source = (
        "from panda_edge import __version__\n"
        "from panda_edge.export.stab_onnx.check import check_onnx\n"
        "from panda_edge.parity.compare import LEVELS\n"
        "from . import qdq\n"
    )
    assert import_problems("panda_edge.calibration.calibrate", source, "x.py") == []


def test_a_module_outside_every_layer_is_reported() -> None:
    (problem,) = import_problems("panda_edge.newthing", "", "newthing.py")
    assert "place 'newthing' in LAYERS" in problem
    (problem,) = import_problems("panda_edge.cli.main", "from panda_edge.newthing import x\n", "main.py")
    assert problem.startswith("main.py:1: panda_edge.newthing belongs to no layer")


# --- the runtime's state is reached through its public API ------------------------------------------

RUNTIME_OBJECTS = ("runtime", "prefix", "chat", "decoder", "engine")  # names the runtime's objects go by


def private_reaches(source: str, filename: str) -> list[str]:
    """`file:line: expr` for each private attribute (`_name`, not a dunder) of a runtime object that
    `source` reads or writes: `runtime._owner`, `self.runtime._resident`, `chat._pending`."""
    found = []
    for node in ast.walk(ast.parse(source, filename)):
        if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__"):
            owner = ast.unparse(node.value).rpartition(".")[2]
            if owner.lstrip("_") in RUNTIME_OBJECTS:
                found.append(f"{filename}:{node.lineno}: {ast.unparse(node)}")
    return found


def test_no_object_touches_the_runtimes_private_state_from_outside() -> None:
    """Chat, serve and a live window use the runtime's public prefix state (enter, claim, release,
    save, n_ctx), as llama.cpp's HTTP layer uses its slots: its insides can change under them. Within
    the runtime too: a conversation does not write the runtime's fields (only `self._x` passes)."""
    files = sorted((SRC / PACKAGE).rglob("*.py"))
    found = [hit for p in files for hit in private_reaches(p.read_text(encoding="utf-8"), str(p))]
    assert not found, "\n".join(found)
    planted = (
        "def f(runtime, worker):\n    worker.runtime._owner = None\n    return runtime.prefix._resident\n"
    )
    assert [hit.partition(": ")[2] for hit in private_reaches(planted, "planted.py")] == [
        "worker.runtime._owner",
        "runtime.prefix._resident",
    ]
