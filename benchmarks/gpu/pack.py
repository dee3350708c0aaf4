"""Pack what a borrowed GPU machine lacks into one gitignored folder, checked against what may travel.

The GPU machine (Python 3.12, torch with CUDA, nvcc, CMake; no network) has no llama-cpp-python, PyAV,
gguf or diskcache. This writes `.gpu-kit/` (default) at the repository root:

- llama-cpp-python's source, the version installed here, without what a CUDA build never reads
  (llama.cpp's model vocabularies, docs, tests, examples, tools, the other GPU backends), re-packed
  as one deterministic .tar.gz (sorted names, mtime 0, no owners), built there by gpu_runtime.py;
- the wheels (cp312, manylinux x86-64) of every package panda-edge and llama-cpp-python need that the
  machine's image does not hold, with their own missing requirements, at the versions installed here;
- `kit.json`: each file's bytes and sha256, and the bytes that travel in one call (the repository's
  tracked and untracked-not-ignored files plus the kit) against the 64 MiB a call may carry.

Over the limit: an error, exit 2, and no folder written (an older kit at --out stays as it was).

    python benchmarks/gpu/pack.py [--out .gpu-kit] [--download-dir DIR] [--limit-bytes N] [--json]

Then, on the GPU machine, `carry: [".gpu-kit"]` and benchmarks/gpu/gpu_runtime.py (see README.md here).
"""

from __future__ import annotations

import argparse
import gzip
import importlib.metadata
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]
# This checkout's panda_edge, also where it is not installed (gpu_runtime.py on the GPU machine imports
# this module first).
sys.path.insert(0, str(REPO / "src"))
from panda_edge.bundle import sha256_file  # noqa: E402

LIMIT_BYTES = 64 * 2**20  # what one device call may carry: working tree + carried paths
KIT_JSON = "kit.json"
WHEELS = "wheels"
PYTHON = ("3.12", "3.12.3")  # the GPU machine's python3
PLATFORMS = (
    "manylinux_2_28_x86_64",
    "manylinux_2_27_x86_64",
    "manylinux_2_17_x86_64",
    "manylinux2014_x86_64",
    "manylinux1_x86_64",
)
LLAMA = "llama-cpp-python"

# The GPU machine's image ('cuda'), as /work/.library/device/KINDS.md listed it on 2026-11-17: a
# requirement named here is not packed.
IMAGE_LIST = """
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch build
certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings
cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils
execnet filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet
httpcore httpx huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax
jax-cuda13-pjrt jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning
lightning-utilities linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib
mdurl meson ml-dtypes mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals
networkx ninja numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver
nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink
nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless optax
opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft pillow pip
pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments
pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout
pytest-xdist python-dateutil pytorch-lightning pyyaml regex requests rich sacrebleu safetensors
scikit-build-core scikit-image scikit-learn scipy seaborn sentencepiece sentence-transformers setuptools
shellingham simplejson six sortedcontainers statsmodels sympy tabulate tensorboard
tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm tokenizers toolz torch
torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray xxhash yarl
zipp
"""
IMAGE_PACKAGES = frozenset(IMAGE_LIST.split())
# The versions the device notes give for some of them (KINDS.md's pip list, 2026-11): a requirement such
# a version does not meet is packed as well (transformers 5.17 is below panda-edge's >=5.25, whose
# reference reads `out.cache`). A package listed without a version is taken to meet every requirement.
IMAGE_VERSIONS = {
    "huggingface-hub": "1.33.0",
    "numpy": "2.5.2",
    "onnx": "1.23.1",
    "onnxruntime": "1.30.0",
    "safetensors": "0.8.0",
    "sentencepiece": "0.2.2",
    "tokenizers": "0.23.2",
    "torch": "2.11.0",
    "transformers": "5.17.0",
}
# panda-edge's extras the GPU run uses: `full` (the reference, export) beside the base install.
EXTRAS = ("full",)

# What a CUDA build of llama-cpp-python (LLAVA_BUILD off) never reads, as paths below the sdist's top
# folder. The CMake adds llama.cpp's tests, tools, examples and servers only when llama.cpp is built
# on its own (not as llama-cpp-python's subdirectory), and ggml adds a backend's folder only when
# that backend is switched on.
PRUNE_DIRS = {
    ".git/": "a copy of the git repository (llama.cpp's build info then reads 'unknown')",
    "vendor/llama.cpp/.git": "the link into that copy",
    "docs/": "llama-cpp-python's documentation",
    "docker/": "llama-cpp-python's Dockerfiles",
    "examples/": "llama-cpp-python's examples",
    "tests/": "llama-cpp-python's tests",
    ".github/": "CI settings",
    "vendor/llama.cpp/models/": "vocabulary GGUFs for llama.cpp's tests",
    "vendor/llama.cpp/docs/": "llama.cpp's documentation",
    "vendor/llama.cpp/media/": "images for llama.cpp's README",
    "vendor/llama.cpp/benches/": "llama.cpp's benchmark results",
    "vendor/llama.cpp/examples/": "llama.cpp's examples (built standalone only)",
    "vendor/llama.cpp/pocs/": "llama.cpp's proofs of concept (built with the examples only)",
    "vendor/llama.cpp/tests/": "llama.cpp's tests (built standalone only)",
    "vendor/llama.cpp/tools/": "llama.cpp's tools and mtmd (LLAVA_BUILD off)",
    "vendor/llama.cpp/app/": "llama.cpp's unified binary (built standalone only)",
    "vendor/llama.cpp/gguf-py/": "llama.cpp's Python GGUF package (the gguf wheel is packed)",
    "vendor/llama.cpp/conversion/": "llama.cpp's Hugging Face converters",
    "vendor/llama.cpp/requirements/": "the converters' pip requirements",
    "vendor/llama.cpp/scripts/": "llama.cpp's maintenance scripts",
    "vendor/llama.cpp/grammars/": "sample GBNF grammars",
    "vendor/llama.cpp/ci/": "llama.cpp's CI scripts",
    "vendor/llama.cpp/.github/": "llama.cpp's CI settings",
    "vendor/llama.cpp/.devops/": "llama.cpp's Dockerfiles and packaging",
    "vendor/llama.cpp/skills/": "notes for coding assistants",
}
PRUNE_FILES = {
    r"vendor/llama\.cpp/convert_[a-z_]+\.py": "llama.cpp's converter scripts",
    r"vendor/llama\.cpp/ggml/src/ggml-(?!cpu/|cuda/)[a-z0-9]+/.*": "ggml backends other than CPU and CUDA",
}
# Files the build cannot do without: a pruning rule that removes one is a bug here.
REQUIRED = (
    "pyproject.toml",
    "README.md",
    "CMakeLists.txt",
    "llama_cpp/__init__.py",
    "vendor/llama.cpp/CMakeLists.txt",
    "vendor/llama.cpp/ggml/src/ggml-cpu/CMakeLists.txt",
    "vendor/llama.cpp/ggml/src/ggml-cuda/CMakeLists.txt",
    "vendor/llama.cpp/common/CMakeLists.txt",
    "vendor/llama.cpp/vendor/CMakeLists.txt",
)


class KitError(Exception):
    """Bad input or a kit that cannot be made: one line for the user, exit 2."""


def normalize(name: str) -> str:
    """A distribution name as pip compares them (PEP 503)."""
    return re.sub(r"[-_.]+", "-", name).lower()


def installed_version(name: str) -> str:
    """The version installed here: the one whose tests passed with panda-edge."""
    try:
        return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
        raise KitError(
            f"{name} is not installed here: install it first, its version is the one packed"
        ) from None


def pip(*args: str) -> None:
    done = subprocess.run([sys.executable, "-m", "pip", *args], capture_output=True, text=True)
    if done.returncode != 0:
        raise KitError(f"pip {' '.join(args[:1])} failed:\n{(done.stdout + done.stderr)[-3000:]}")


def download_sdist(version: str, directory: Path) -> Path:
    """llama-cpp-python's sdist from the package index (kept in `directory` for the next run)."""
    path = directory / f"llama_cpp_python-{version}.tar.gz"
    if not path.is_file():
        pip("download", "--no-deps", "--no-binary", ":all:", "-d", str(directory), f"{LLAMA}=={version}")
    if not path.is_file():
        raise KitError(f"pip download wrote no {path.name} into {directory}")
    return path


def download_wheels(pins: dict[str, str], directory: Path) -> dict[str, Path]:
    """One wheel per `name==version` for the GPU machine's Python and platform."""
    platforms = [arg for p in PLATFORMS for arg in ("--platform", p)]
    args = ["download", "--no-deps", "--only-binary=:all:", "--python-version", PYTHON[0]]
    pip(
        *args,
        "--implementation",
        "cp",
        *platforms,
        "-d",
        str(directory),
        *(f"{n}=={v}" for n, v in pins.items()),
    )
    found = {}
    for name, version in pins.items():
        stem = re.sub(r"[-_.]+", "_", name).lower()
        matches = [p for p in directory.glob("*.whl") if p.name.lower().startswith(f"{stem}-{version}-")]
        if len(matches) != 1:
            raise KitError(f"expected one wheel of {name} {version} in {directory}, found {len(matches)}")
        found[name] = matches[0]
    return found


def applicable(lines: list[str]) -> list[Requirement]:
    """The requirements that apply on the GPU machine (CPython 3.12, Linux x86-64, no extras asked)."""
    env = {
        "python_version": PYTHON[0],
        "python_full_version": PYTHON[1],
        "implementation_name": "cpython",
        "platform_python_implementation": "CPython",
        "sys_platform": "linux",
        "platform_system": "Linux",
        "platform_machine": "x86_64",
        "os_name": "posix",
        "extra": "",
    }
    return [req for req in map(Requirement, lines) if req.marker is None or req.marker.evaluate(env)]


def image_meets(req: Requirement) -> bool:
    """Whether the image's own package does for `req`: it has one, and its version (where known) fits."""
    name = normalize(req.name)
    version = IMAGE_VERSIONS.get(name)
    return name in IMAGE_PACKAGES and (version is None or req.specifier.contains(version, prereleases=True))


def metadata_requires(text: str) -> list[str]:
    """Requires-Dist lines of a METADATA / PKG-INFO text."""
    return [line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("Requires-Dist:")]


def wheel_requires(path: Path) -> list[str]:
    with zipfile.ZipFile(path) as z:
        name = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        return metadata_requires(z.read(name).decode("utf-8"))


def panda_requires() -> list[str]:
    """panda-edge's base dependencies and those of the extras the GPU run uses."""
    try:
        import tomllib
    except ModuleNotFoundError:  # Python 3.10
        raise KitError("pack.py needs Python 3.11 or later (tomllib)") from None
    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    lines = list(project["dependencies"])
    for extra in EXTRAS:
        lines += project["optional-dependencies"][extra]
    return lines


def pack_wheels(roots: list[str], directory: Path) -> list[dict[str, Any]]:
    """Every requirement of `roots` (recursively through the packed wheels) the image lacks or has too
    old a version of, as a wheel of the version installed here."""
    directory.mkdir(parents=True, exist_ok=True)
    seen = {normalize(LLAMA)}
    packed: list[dict[str, Any]] = []
    todo = applicable(roots)
    while todo:
        pins = {}
        for req in todo:
            if normalize(req.name) not in seen and not image_meets(req):
                seen.add(normalize(req.name))
                pins[req.name] = installed_version(req.name)
        todo = []
        if not pins:
            break
        for name, path in download_wheels(pins, directory).items():
            requires = wheel_requires(path)
            packed.append(
                {"name": normalize(name), "version": pins[name], "file": path.name, "requires": requires}
            )
            todo += applicable(requires)
    return sorted(packed, key=lambda w: w["name"])


def pruned_by(name: str) -> str | None:
    """The pruning rule that removes the sdist member `name` (a path below the top folder), if any."""
    for prefix in PRUNE_DIRS:
        if name.startswith(prefix):
            return prefix
    for pattern in PRUNE_FILES:
        if re.fullmatch(pattern, name):
            return pattern
    return None


def prune_sdist(sdist: Path, target: Path) -> tuple[dict[str, Any], str]:
    """Re-pack `sdist` into `target` without the pruned members: regular files only, sorted by name,
    mtime 0, owner root with no names, mode 644 or 755, gzip without a name or time: same sdist, same
    bytes. Returns what was kept and pruned, and the sdist's PKG-INFO."""
    kept: dict[str, tuple[tarfile.TarInfo, bytes]] = {}
    pruned: dict[str, dict[str, int]] = {}
    top = None
    with tarfile.open(sdist, "r|gz") as source:
        for member in source:
            first, _, rest = member.name.partition("/")
            top = top or first
            if first != top or not rest:
                raise KitError(f"{sdist.name}: {member.name} is outside its top folder {top}")
            if member.isdir():
                continue
            if not member.isfile():
                raise KitError(f"{sdist.name}: {member.name} is not a regular file")
            rule = pruned_by(rest)
            if rule is not None:
                count = pruned.setdefault(rule, {"files": 0, "bytes": 0})
                count["files"] += 1
                count["bytes"] += member.size
                continue
            data = source.extractfile(member).read()  # type: ignore[union-attr]
            kept[member.name] = (member, data)
    missing = [r for r in REQUIRED if f"{top}/{r}" not in kept]
    if missing:
        raise KitError(f"pruning removed what the build needs: {', '.join(missing)}")
    with (
        target.open("wb") as raw,
        gzip.GzipFile(filename="", mode="wb", fileobj=raw, mtime=0) as gz,
        tarfile.open(fileobj=gz, mode="w", format=tarfile.PAX_FORMAT) as out,
    ):
        for name in sorted(kept):
            member, data = kept[name]
            info = tarfile.TarInfo(name)
            info.size = len(data)
            info.mode = 0o755 if member.mode & 0o111 else 0o644
            info.mtime = 0
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            out.addfile(info, io.BytesIO(data))
    facts = {
        "top": top,
        "kept_files": len(kept),
        "kept_bytes": sum(len(d) for _, d in kept.values()),
        "pruned": {PRUNE_DIRS.get(r) or PRUNE_FILES[r]: c for r, c in sorted(pruned.items())},
    }
    pkg_info = kept.get(f"{top}/PKG-INFO")
    return facts, pkg_info[1].decode() if pkg_info else ""


def travelling_files(exclude: list[Path]) -> tuple[int, int]:
    """Count and bytes of the repository's tracked and untracked-not-ignored files (what a device call
    sends besides the carried paths), leaving out those under `exclude`."""
    done = subprocess.run(
        ["git", "ls-files", "-z", "-co", "--exclude-standard"], cwd=REPO, capture_output=True, check=True
    )
    skip = [p.resolve() for p in exclude]
    count = total = 0
    for name in sorted(set(done.stdout.decode().split("\0")) - {""}):
        path = REPO / name
        if any(path.resolve().is_relative_to(s) for s in skip):
            continue
        try:
            total += path.lstat().st_size  # a deleted tracked file is listed but does not travel
        except FileNotFoundError:
            continue
        count += 1
    return count, total


def describe(staging: Path, repo: tuple[int, int], limit: int, facts: dict[str, Any]) -> dict[str, Any]:
    """kit.json's content: every file's bytes and sha256, and the travelling total, which counts
    kit.json itself (sized until its own size stops changing)."""
    files = {
        p.relative_to(staging).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256_file(p)}
        for p in sorted(staging.rglob("*"))
        if p.is_file() and p.name != KIT_JSON
    }
    content_bytes = sum(f["bytes"] for f in files.values())
    own = 0
    while True:
        kit_bytes = content_bytes + own
        total = repo[1] + kit_bytes
        report = {
            **facts,
            "files": files,
            "kit_bytes": kit_bytes,
            "repo_files": repo[0],
            "repo_bytes": repo[1],
            "total_bytes": total,
            "limit_bytes": limit,
            "fits": total <= limit,
        }
        size = len(render(report))
        if size == own:
            return report
        own = size


def render(report: dict[str, Any]) -> bytes:
    return (json.dumps(report, indent=1, sort_keys=False) + "\n").encode()


def build_kit(out: Path, download_dir: Path | None, limit: int) -> dict[str, Any]:
    """Write the kit into a staging folder beside `out`, and move it onto `out` only when it fits."""
    version = installed_version(LLAMA)
    staging = out.parent / f"{out.name}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        downloads = download_dir or staging / ".downloads"
        downloads.mkdir(parents=True, exist_ok=True)
        sdist = download_sdist(version, downloads)
        source_name = f"llama_cpp_python-{version}.cuda-src.tar.gz"
        source, pkg_info = prune_sdist(sdist, staging / source_name)
        llama_requires = metadata_requires(pkg_info)
        wheels = pack_wheels(panda_requires() + llama_requires, staging / WHEELS)
        sdist_sha256 = sha256_file(sdist)
        if download_dir is None:
            shutil.rmtree(downloads)
        facts = {
            "llama_cpp_python": {
                "version": version,
                "sdist": sdist.name,
                "sdist_sha256": sdist_sha256,
                "source": source_name,
                **source,
                "requires": llama_requires,
            },
            "wheels": [{**w, "file": f"{WHEELS}/{w['file']}"} for w in wheels],
            "python": PYTHON[1],
            "platforms": list(PLATFORMS),
        }
        report = describe(staging, travelling_files([out, staging]), limit, facts)
        if not report["fits"]:
            raise KitError(
                f"the kit would not travel: repository {mib(report['repo_bytes'])} + kit "
                f"{mib(report['kit_bytes'])} = {mib(report['total_bytes'])}, over the limit of "
                f"{mib(limit)} ({limit:,} bytes); nothing written"
            )
        (staging / KIT_JSON).write_bytes(render(report))
        old = out.parent / f"{out.name}.old-{os.getpid()}"
        if out.exists():
            os.replace(out, old)
        os.replace(staging, out)
        shutil.rmtree(old, ignore_errors=True)
        return report
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def summary(out: Path, report: dict[str, Any]) -> str:
    llama = report["llama_cpp_python"]
    lines = [f"wrote {out}: llama-cpp-python {llama['version']} source ({llama['kept_files']} files kept)"]
    for name, entry in report["files"].items():
        lines.append(f"  {name:60} {mib(entry['bytes']):>10}")
    own = report["kit_bytes"] - sum(f["bytes"] for f in report["files"].values())
    lines.append(f"  {KIT_JSON:60} {mib(own):>10}")
    lines.append(
        f"travels per call: repository {mib(report['repo_bytes'])} ({report['repo_files']} files) + kit "
        f"{mib(report['kit_bytes'])} = {mib(report['total_bytes'])} of {mib(report['limit_bytes'])}"
    )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--out", type=Path, default=REPO / ".gpu-kit", help="the kit folder (default: %(default)s)"
    )
    parser.add_argument(
        "--download-dir", type=Path, help="keep pip's downloads here and reuse them (default: not kept)"
    )
    parser.add_argument(
        "--limit-bytes", type=int, default=LIMIT_BYTES, help="what one call may carry (default: %(default)s)"
    )
    parser.add_argument("--json", action="store_true", help="print kit.json instead of the summary")
    args = parser.parse_args(argv)
    if args.limit_bytes < 1:
        parser.error("--limit-bytes must be positive")
    try:
        report = build_kit(args.out.resolve(), args.download_dir, args.limit_bytes)
    except KitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.json:
        sys.stdout.write(render(report).decode())
    else:
        print(summary(args.out, report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
