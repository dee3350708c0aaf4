"""The device runtime on a borrowed NVIDIA GPU: llama.cpp built for CUDA from the packed source, the tiny
model's parity with the runtime on the GPU, and a random-weight Video-Panda-7B's time to first token,
decode speed, prefix cache and GPU memory against `panda plan`.

Run on the GPU machine from the repository root, the kit carried (`carry: [".gpu-kit"]`, written
here by benchmarks/gpu/pack.py):

    python3 benchmarks/gpu/gpu_runtime.py --phases build,tiny,7b --prepare-7b --out $OUT/gpu_runtime.json

and, when the 7b phase ran out of that call's time, at once (while the machine is warm, its .gpu-work/
still there) `--phases 7b`, which reuses the checkpoint and bundle already written.

Every run first installs the kit's wheels into WORK/site (default .gpu-work/site), which goes on the
PYTHONPATH of each step with src/. Phases:

- build: llama-cpp-python from the kit's source with GGML_CUDA for sm_90 into WORK/site, within
  --build-budget-s (the build is killed past it; its build folder stays, so a rerun resumes it); skipped
  when WORK/site already holds a build of the same source and CMake arguments;
- (--prepare-7b) the 7b phase's checkpoint and clip, written in the background from the start;
- tiny: the embedded tiny model's bundle (f32 + q8_0 GGUFs) and `panda parity --levels e2e,task` with
  the runtime's vision on CUDA and every decoder layer on the GPU;
- 7b: a random-weight Video-Panda-7B in the released layout, its bundle (ONNX + q4_k_m), then with
  the PyTorch vision on CUDA in fp16 and all layers on the GPU: `panda run` (time to first token,
  decode tok/s, GPU memory used, polled with nvidia-smi, against `panda plan` for this GPU), `panda
  chat` with two questions (the follow-up from the prefix in memory, the prefix saved with --cache) and
  `panda run --cache` in a new process (the prefix restored from disk, the same answer).

Each phase has a wall-time budget, and no step runs past --deadline-s (570) from the call's start.
The report (what ran, what was skipped and why, each step's exit status, wall time, peak RSS and
stderr tail) is written after every step, atomically, to WORK/gpu_runtime.json (merged across calls)
and to --out. Exit 0 when every step ran and succeeded, 1 otherwise, 2 for bad arguments or a
damaged kit.

`--dry-run` takes the same path on a machine without a GPU, in well under a minute: the source unpacked and
configured with CMake for the CPU (no CUDA build: the llama-cpp-python installed here runs), no GPU
flags, a small model in the released layout in place of the 7B, GPU fields null. The test suite runs
it (tests/test_gpu_kit.py).
"""

from __future__ import annotations

import argparse
import contextlib
import glob
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

# The script's folder is on sys.path when it runs: the GPU machine's Python and platforms, as packed;
# importing pack puts this checkout's src/ on sys.path for panda_edge below.
from pack import PLATFORMS, PYTHON, REPO, sha256_file

from panda_edge.fileio import write_json

PHASES = ("build", "tiny", "7b")
# Each phase's wall-time cap; with a machine's start (~90 s) and the two calls' set-up they keep a
# session within its 15 minutes of device time (benchmarks/gpu/README.md).
BUDGETS_S = {"build": 330.0, "tiny": 100.0, "7b": 300.0}
TASK_KEYS = ("task", "task_fp16", "task_bf16")  # parity's task levels with torch vision (dry run: task)
QUESTIONS = ("What is moving in the video?", "Which direction does it move?")
N_CTX = 4096
MAX_NEW_TOKENS = 64
GGUF_7B = "q4_k_m"
TAIL_CHARS = 2000
MAX_LOGS = 6  # failed steps' logs beside --out: with the report, within the 8 files the device returns
MIN_STEP_S = 5.0  # a step is not started with less of its phase's budget left
# The CMake arguments of the CUDA build: Hopper only, no llava/mtmd, llama.cpp's tests, tools, examples
# and server off, no NCCL (one GPU).
CUDA_CMAKE_ARGS = (
    "-DGGML_CUDA=on",
    "-DCMAKE_CUDA_ARCHITECTURES=90",
    "-DLLAVA_BUILD=off",
    "-DGGML_CUDA_NCCL=off",
    "-DLLAMA_BUILD_TESTS=off",
    "-DLLAMA_BUILD_EXAMPLES=off",
    "-DLLAMA_BUILD_TOOLS=off",
    "-DLLAMA_BUILD_SERVER=off",
)
CPU_CMAKE_ARGS = ("-DLLAVA_BUILD=off",)
PIP_INSTALL = (sys.executable, "-m", "pip", "install")


class KitError(Exception):
    """A kit or argument this script cannot work with: one line, exit 2."""


def read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def tail(path: Path, chars: int = TAIL_CHARS) -> str:
    try:
        with path.open("rb") as f:
            f.seek(max(0, f.seek(0, os.SEEK_END) - chars))
            return f.read().decode(errors="replace")
    except OSError:
        return ""


def load_kit(kit: Path) -> dict[str, Any]:
    """kit.json, every file it lists checked against its size and sha256."""
    manifest = read_json(kit / "kit.json")
    if not isinstance(manifest, dict) or "files" not in manifest:
        raise KitError(f"{kit}: no kit.json (write the kit with benchmarks/gpu/pack.py and carry it)")
    for name, entry in manifest["files"].items():
        path = kit / name
        if (
            not path.is_file()
            or path.stat().st_size != entry["bytes"]
            or sha256_file(path) != entry["sha256"]
        ):
            raise KitError(f"{path}: missing or not the file kit.json lists (pack the kit again)")
    return manifest


class GpuMemoryPoller:
    """nvidia-smi's memory.used (MiB), one query every `interval_s` while a step runs (each its own
    process: nothing waits in a pipe's buffer); the peak is read after. Without nvidia-smi every
    reading is None."""

    def __init__(self, enabled: bool = True, interval_s: float = 0.2) -> None:
        self.enabled = enabled
        self.interval_s = interval_s
        self.peak_mib: int | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def used_mib() -> int | None:
        value = nvidia_smi("memory.used", units=False)
        try:
            return int(value[0]) if value else None
        except ValueError:
            return None

    def __enter__(self) -> GpuMemoryPoller:
        if self.enabled and self.used_mib() is not None:
            self._thread = threading.Thread(target=self._poll, daemon=True)
            self._thread.start()
        return self

    def _poll(self) -> None:
        while not self._stop.is_set():
            value = self.used_mib()
            if value is not None:
                self.samples += 1
                self.peak_mib = value if self.peak_mib is None else max(self.peak_mib, value)
            self._stop.wait(self.interval_s)

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=35)


def nvidia_smi(fields: str, units: bool = True) -> list[str] | None:
    """One query of the first GPU, its comma-separated values; None without nvidia-smi or a GPU."""
    fmt = "csv,noheader" if units else "csv,noheader,nounits"
    try:
        done = subprocess.run(
            ["nvidia-smi", f"--query-gpu={fields}", f"--format={fmt}"],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if done.returncode != 0 or not done.stdout.strip():
        return None
    return [v.strip() for v in done.stdout.strip().splitlines()[0].split(",")]


def find_cuda_libraries() -> dict[str, Any]:
    """Where cuBLAS (header, libcublas, libcublasLt) and the driver library are, and the CMake
    arguments that point the build at them when CMake would not find them in the CUDA toolkit: an
    image whose toolkit was put together from NVIDIA's pip wheels (as on the machine this was written
    on) keeps cuBLAS in the nvidia-cublas wheel beside torch, and the driver's libcuda.so.1 where the
    driver is mounted. Without a driver library to link, ggml's CUDA memory pool goes without
    virtual memory management (GGML_CUDA_NO_VMM)."""
    nvcc = shutil.which("nvcc")
    roots = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH"), "/usr/local/cuda"]
    if nvcc:
        roots.append(str(Path(nvcc).resolve().parents[1]))
    toolkit = next((Path(r) for r in roots if r and (Path(r) / "include" / "cuda_runtime.h").is_file()), None)
    tk = [toolkit / d for d in ("lib64", "lib", "targets/x86_64-linux/lib")] if toolkit else []
    tk_include = [toolkit / d for d in ("include", "targets/x86_64-linux/include")] if toolkit else []
    wheels = [Path(p, "nvidia") for p in sys.path if p and Path(p, "nvidia").is_dir()]

    def first(patterns: list[str]) -> str | None:
        for pattern in patterns:
            found = sorted(glob.glob(pattern))
            if found:
                return found[0]
        return None

    def in_wheels(path: str) -> str | None:
        return first([f"{w}/*/{path}" for w in wheels] + [f"{w}/*/*/{path}" for w in wheels])

    args: list[str] = []
    if nvcc is None and toolkit is not None and (toolkit / "bin" / "nvcc").is_file():
        nvcc = str(toolkit / "bin" / "nvcc")  # not on PATH: CMake is told where it is
        args.append(f"-DCMAKE_CUDA_COMPILER={nvcc}")
    found: dict[str, Any] = {"nvcc": nvcc, "toolkit": str(toolkit) if toolkit else None}
    linked_dirs: set[str] = set()
    header = first([f"{d}/cublas_v2.h" for d in tk_include])
    if header is None:
        header = in_wheels("include/cublas_v2.h")
        if header is not None:
            include = str(Path(header).parent)
            args += [f"-DCMAKE_CUDA_FLAGS=-I{include}", f"-DCMAKE_CXX_FLAGS=-I{include}"]
    found["cublas_header"] = header
    for lib in ("cublas", "cublasLt"):
        path = first([f"{d}/lib{lib}.so" for d in tk])  # what CMake's FindCUDAToolkit finds itself
        if path is None:
            path = first([f"{d}/lib{lib}.so.*" for d in tk]) or in_wheels(f"lib/lib{lib}.so*")
            if path is not None:
                args.append(f"-DCUDA_{lib}_LIBRARY={path}")
                linked_dirs.add(str(Path(path).parent))
        found[lib] = path
    driver = first([f"{d}/stubs/libcuda.so" for d in tk] + [f"{d}/libcuda.so" for d in tk])
    if driver is None:
        known = [
            "/usr/local/nvidia/lib64",
            "/usr/local/nvidia/lib",
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib64",
        ]
        driver = first([f"{d}/libcuda.so.1" for d in known] + [f"{d}/libcuda.so" for d in known])
        driver = driver or loader_knows("libcuda.so.1")
        args.append(f"-DCUDA_cuda_driver_LIBRARY={driver}" if driver else "-DGGML_CUDA_NO_VMM=on")
    found["cuda_driver"] = driver
    found["cmake_args"] = args
    # For the loader, should the built library not find them by itself (llama_cpp_check tries both)
    found["library_dirs"] = sorted(linked_dirs | {str(d) for d in tk if d.is_dir()})
    return found


def loader_knows(soname: str) -> str | None:
    """Where the dynamic loader's cache (`ldconfig -p`) has `soname` for x86-64, if it does."""
    try:
        done = subprocess.run(["ldconfig", "-p"], capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired):
        return None
    for line in done.stdout.splitlines():
        name, _, rest = line.strip().partition(" (")
        if name == soname and "x86-64" in rest and " => " in rest:
            return rest.split(" => ", 1)[1].strip()
    return None


@dataclass
class Launched:
    """A step's process, started."""

    name: str
    argv: list[str]
    proc: subprocess.Popen[str]
    start: float
    log: Path
    out: Path


class Run:
    """One call of this script: its report, where things go, the environment of its steps."""

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.dry = args.dry_run
        self.work: Path = args.work.resolve()
        self.site = self.work / "site"
        self.logs = self.work / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.report_path = self.work / "gpu_runtime.json"
        previous = read_json(self.report_path)
        self.report: dict[str, Any] = previous if isinstance(previous, dict) else {}
        self.report.setdefault("phases", {})
        self.report.setdefault("calls", [])
        self.call = {
            "phases": args.phases,
            "dry_run": self.dry,
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        }
        self.report["calls"].append(self.call)
        self.env = dict(os.environ)
        # a dry run installs the wheels for the GPU machine's Python (3.12) to check them, and runs on the
        # packages here: the kit packs the versions installed here, so they are the same
        paths = [str(REPO / "src"), self.env.get("PYTHONPATH", "")]
        if not self.dry:
            paths.insert(0, str(self.site))
        self.env["PYTHONPATH"] = os.pathsep.join(p for p in paths if p)
        self.env["PYTHONUNBUFFERED"] = "1"
        self.env["XDG_CACHE_HOME"] = str(self.work / "cache")  # panda-edge's cache stays in WORK
        if not self.dry:
            sys.path.insert(0, str(self.site))
        self.phase: dict[str, Any] | None = None
        self.call_deadline = time.perf_counter() + args.deadline_s
        self.deadline = self.call_deadline
        self.prepare: Launched | None = None  # --prepare-7b's writer while it runs
        self.all_ok = True
        self.logs_kept = 0

    def save(self) -> None:
        write_json(self.report_path, self.report)
        if self.args.out is not None:
            write_json(self.args.out, self.report)

    def begin(self, name: str, budget_s: float) -> dict[str, Any]:
        """A phase: its steps get at most `budget_s` together, and none runs past the call's deadline."""
        self.phase_start = time.perf_counter()
        self.deadline = min(self.phase_start + budget_s, self.call_deadline)
        budget_s = round(self.deadline - self.phase_start, 1)
        self.phase = {"budget_s": budget_s, "dry_run": self.dry, "steps": {}, "skipped": {}}
        self.report["phases"][name] = self.phase
        print(f"== {name} (budget {budget_s:.0f} s)", flush=True)
        return self.phase

    def end(self) -> None:
        assert self.phase is not None
        self.phase["wall_s"] = round(time.perf_counter() - self.phase_start, 1)
        self.save()

    def skip(self, name: str, reason: str, fails: bool = True) -> None:
        """A step not run, and why; a skip for lack of budget or of a needed flag fails the call, one by
        design (the dry run's CUDA build) does not."""
        assert self.phase is not None
        self.phase["skipped"][name] = reason
        self.all_ok &= not fails
        print(f"{name}: skipped ({reason})", flush=True)
        self.save()

    def step(
        self,
        name: str,
        argv: list[Any],
        stdin: str | None = None,
        env: dict[str, str] | None = None,
        timeout_s: float | None = None,
        parse_stdout: bool = False,
        poll_gpu: bool = False,
        allowed: tuple[int, ...] = (0,),
    ) -> dict[str, Any] | None:
        """Run `argv` as a process of its own (its own session: on timeout the whole group is killed)
        within the phase's budget; record exit status, wall time, peak RSS (this process's, from
        wait4), the tails of stderr and stdout or, with `parse_stdout`, stdout as JSON, and with
        `poll_gpu` the GPU memory it used. `allowed`: the exit statuses that count as success (a
        fallback's). None: not started."""
        assert self.phase is not None
        left = self.deadline - time.perf_counter()
        if left < MIN_STEP_S:
            whose = "call's deadline" if self.deadline == self.call_deadline else "phase's budget"
            self.skip(name, f"the {whose} is spent ({left:.0f} s left)")
            return None
        limit = left if timeout_s is None else min(timeout_s, left)
        baseline = GpuMemoryPoller.used_mib() if poll_gpu else None
        with GpuMemoryPoller(poll_gpu) as poller:
            started = self.launch(name, argv, stdin, env)
            record = self.finish(started, self.phase, limit, parse_stdout, allowed)
        if poll_gpu:
            record["gpu_memory_idle_mib"] = baseline
            record["gpu_memory_peak_mib"] = poller.peak_mib
            record["gpu_memory_samples"] = poller.samples
            used = None if baseline is None or poller.peak_mib is None else poller.peak_mib - baseline
            record["gpu_memory_used_mib"] = used
            self.save()
        return record

    def launch(
        self, name: str, argv: list[Any], stdin: str | None = None, env: dict[str, str] | None = None
    ) -> Launched:
        """Start `argv` in a session of its own, stdout and stderr into WORK/logs/NAME.out and .err."""
        log, out = self.logs / f"{name}.err", self.logs / f"{name}.out"
        with log.open("w") as err_f, out.open("w") as out_f:
            proc = subprocess.Popen(
                [str(a) for a in argv],
                stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                stdout=out_f,
                stderr=err_f,
                env=env or self.env,
                cwd=REPO,
                text=True,
                start_new_session=True,
            )
        if stdin is not None:
            assert proc.stdin is not None
            with contextlib.suppress(BrokenPipeError):  # it ended before reading: its exit says why
                proc.stdin.write(stdin)
                proc.stdin.close()
        return Launched(name, [str(a) for a in argv], proc, time.perf_counter(), log, out)

    def finish(
        self,
        started: Launched,
        phase: dict[str, Any],
        limit_s: float,
        parse_stdout: bool = False,
        allowed: tuple[int, ...] = (0,),
    ) -> dict[str, Any]:
        """Wait for a launched step (killed past `limit_s`) and record it in `phase`."""
        status, usage, timed_out = wait_within(started.proc, limit_s)
        record: dict[str, Any] = {"argv": started.argv, "exit": os.waitstatus_to_exitcode(status)}
        record["wall_s"] = round(time.perf_counter() - started.start, 1)
        record["timed_out"] = timed_out
        record["timeout_s"] = round(limit_s, 1)
        record["peak_rss_mb"] = round(usage.ru_maxrss / 1024)
        record["stderr_tail"] = tail(started.log)
        if parse_stdout:
            record["result"] = read_json(started.out)
        else:
            record["stdout_tail"] = tail(started.out)
        record["ok"] = record["exit"] in allowed and not timed_out
        if not record["ok"]:
            record["log"] = self.keep_log(started)
        phase["steps"][started.name] = record
        self.all_ok &= record["ok"]
        extra = " (timed out)" if timed_out else ""
        print(
            f"{started.name}: exit {record['exit']}{extra}, {record['wall_s']} s, {record['peak_rss_mb']} MB",
            flush=True,
        )
        self.save()
        return record

    def keep_log(self, started: Launched) -> str | None:
        """A failed step's stderr (its last MiB) beside --out, as the device returns only what is under
        $OUT; at most MAX_LOGS of them (the device returns 8 files)."""
        if self.args.out is None or self.logs_kept >= MAX_LOGS:
            return None
        self.logs_kept += 1
        target = self.args.out.parent / f"{started.name}.err.txt"
        data = started.log.read_bytes()[-(1 << 20) :] if started.log.is_file() else b""
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        return target.name

    def python(self, name: str, code: str, **kwargs: Any) -> dict[str, Any] | None:
        """A step running `code` in this Python, its stdout parsed as JSON."""
        return self.step(name, [sys.executable, "-c", code], parse_stdout=True, **kwargs)

    def panda(self, name: str, args: list[Any], **kwargs: Any) -> dict[str, Any] | None:
        return self.step(name, [sys.executable, "-m", "panda_edge.cli.main", *args], **kwargs)


def wait_within(proc: subprocess.Popen[str], limit_s: float) -> tuple[int, Any, bool]:
    """Wait for `proc` (and read its resource use) for at most `limit_s`; past it, kill every process
    of its session and say so."""
    start = time.perf_counter()
    while True:
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        if time.perf_counter() - start > limit_s:
            kill_session(proc.pid)
            _, status, usage = os.wait4(proc.pid, 0)
            proc.returncode = os.waitstatus_to_exitcode(status)
            return status, usage, True
        time.sleep(0.05)
    proc.returncode = os.waitstatus_to_exitcode(status)
    return status, usage, False


def kill_session(sid: int) -> None:
    """SIGKILL every live process of session `sid`, until none is left: ninja starts each compile in a
    process group of its own, so killing the step's group would leave nvcc running."""
    for _ in range(50):
        alive = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:  # the fields after the command's name: state, ppid, process group, session, ...
                state, _, _, session = stat.read_text().rsplit(")", 1)[1].split()[:4]
            except (OSError, IndexError, ValueError):
                continue
            if int(session) == sid and state != "Z":
                alive.append(int(stat.parent.name))
        if not alive:
            return
        for pid in alive:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.1)


# --- set-up -------------------------------------------------------------------------------------------


def install_wheels(run: Run, kit: Path, manifest: dict[str, Any]) -> None:
    """The kit's wheels into WORK/site (not again when the same wheels are there), then what this
    machine is."""
    wheels = [w["file"] for w in manifest.get("wheels", [])]
    key = {w: manifest["files"][w]["sha256"] for w in wheels}
    marker = run.site / ".kit-wheels.json"
    phase = run.begin("setup", 120.0)
    if read_json(marker) == key:
        phase["wheels"] = {"installed": "before (same wheels)", "files": wheels}
    else:
        argv = [*PIP_INSTALL, "--no-index", "--no-deps", "--no-compile", "--upgrade", "--target", run.site]
        if run.dry:  # this Python is not the GPU machine's: install its wheels as they will be there
            argv += ["--python-version", PYTHON[0], "--implementation", "cp", "--only-binary=:all:"]
            argv += [a for p in PLATFORMS for a in ("--platform", p)]
        record = run.step("pip_install_wheels", [*argv, *(kit / w for w in wheels)])
        if record is not None and record["exit"] == 0:
            write_json(marker, key)
        phase["wheels"] = {"installed": "now", "files": wheels}
    phase["machine"] = run.report["machine"] = machine(run)
    run.end()


def machine(run: Run) -> dict[str, Any]:
    """The GPU (name, driver, memory; null without nvidia-smi), CPU, and the versions that matter."""
    from panda_edge.host import cpu_info

    gpu = nvidia_smi("name,driver_version,memory.total")
    cpu, features = cpu_info()
    code = (
        "import importlib.metadata as m, json\n"
        "names = ['torch', 'transformers', 'numpy', 'onnx', 'onnxruntime', 'av', 'gguf',\n"
        "         'llama_cpp_python', 'sentencepiece', 'safetensors', 'typer', 'diskcache']\n"
        "out = {}\n"
        "for n in names:\n"
        "    try:\n"
        "        out[n] = m.version(n)\n"
        "    except m.PackageNotFoundError:\n"
        "        out[n] = None\n"
        "import torch\n"
        "out['torch_cuda'] = torch.version.cuda\n"
        "out['torch_sees_gpu'] = torch.cuda.is_available()\n"
        "print(json.dumps(out))\n"
    )
    versions = run.python("versions", code, timeout_s=60)
    nvcc = shutil.which("nvcc")
    nvcc_version = None
    if nvcc:
        done = subprocess.run([nvcc, "--version"], capture_output=True, text=True)
        nvcc_version = done.stdout.strip().splitlines()[-1] if done.stdout.strip() else None
    return {
        "gpu": gpu[0] if gpu else None,
        "driver": gpu[1] if gpu else None,
        "gpu_memory_total": gpu[2] if gpu else None,
        "cpu": cpu,
        "cpu_features": features,
        "cores": os.cpu_count(),
        "python": sys.version.split()[0],
        "nvcc": nvcc_version,
        "versions": (versions or {}).get("result"),
    }


# --- phases -----------------------------------------------------------------------------------------------


def unpack_source(run: Run, kit: Path, manifest: dict[str, Any]) -> Path:
    """The kit's llama-cpp-python source under WORK/src (again only when the tarball changed)."""
    llama = manifest["llama_cpp_python"]
    sha = manifest["files"][llama["source"]]["sha256"]
    target = run.work / "src"
    source = target / llama["top"]
    if read_json(target / ".source.json") != {"sha256": sha}:
        shutil.rmtree(target, ignore_errors=True)
        target.mkdir(parents=True)
        with tarfile.open(kit / llama["source"]) as tar:
            tar.extractall(target, filter="data")
        write_json(target / ".source.json", {"sha256": sha})
    return source


def phase_build(run: Run, kit: Path, manifest: dict[str, Any]) -> None:
    # --build-budget-s is the compile's; the phase gets a minute more for unpacking and the check after
    phase = run.begin("build", run.args.build_budget_s + 60)
    start = time.perf_counter()
    source = unpack_source(run, kit, manifest)
    phase["unpack_s"] = round(time.perf_counter() - start, 1)
    phase["source_sha256"] = manifest["files"][manifest["llama_cpp_python"]["source"]]["sha256"]
    cuda = find_cuda_libraries()
    phase["cuda_libraries"] = cuda
    cmake_args = [*CUDA_CMAKE_ARGS, *cuda["cmake_args"]]
    phase["cmake_args"] = cmake_args
    phase["parallel"] = os.cpu_count()
    build_key = {"source_sha256": phase["source_sha256"], "cmake_args": cmake_args}
    marker = run.site / ".llama_cpp_build.json"
    if run.dry:
        phase["built"] = False
        run.skip(
            "cuda_build", "dry run: no CUDA build; the llama-cpp-python installed here runs", fails=False
        )
        if shutil.which("cmake"):
            args = ["cmake", "-S", source, "-B", run.work / "cmake-dry", *CPU_CMAKE_ARGS]
            run.step("cmake_configure_cpu", args, timeout_s=120)
        else:
            run.skip("cmake_configure_cpu", "no cmake on PATH here", fails=False)
    elif read_json(marker) == build_key and any(run.site.glob("llama_cpp/lib/libggml-cuda*")):
        phase["built"] = "before (same source and CMake arguments)"
    else:
        env = dict(run.env)
        env["CMAKE_ARGS"] = " ".join(cmake_args)
        env["CMAKE_BUILD_PARALLEL_LEVEL"] = str(os.cpu_count() or 1)
        argv = [*PIP_INSTALL, "-v", "--no-build-isolation", "--no-deps", "--no-index", "--upgrade"]
        argv += ["--no-compile", "--target", run.site]
        argv += [f"--config-settings=build-dir={run.work / 'build-cuda'}", source]  # kept: a rerun resumes
        record = run.step("cuda_build", argv, env=env, timeout_s=run.args.build_budget_s)
        phase["built"] = bool(record and record["exit"] == 0 and not record["timed_out"])
        if phase["built"]:
            write_json(marker, build_key)
    check = (
        "import json, llama_cpp\n"
        "print(json.dumps({'version': llama_cpp.__version__, 'file': llama_cpp.__file__,\n"
        "                  'gpu_offload': bool(llama_cpp.llama_supports_gpu_offload())}))\n"
    )
    # The build as it loads by itself first; should a CUDA library not be found, again with the
    # folders of those it linked on LD_LIBRARY_PATH, which every later step then gets.
    phase["ld_library_path"] = None
    record = run.python("llama_cpp_check", check, timeout_s=120, allowed=(0, 1))
    result = (record or {}).get("result") or {}
    if not run.dry and record is not None and record["exit"] != 0 and cuda["library_dirs"]:
        phase["ld_library_path"] = cuda["library_dirs"]
        record = run.python("llama_cpp_check_ld_path", check, env=runtime_env(run), timeout_s=120)
        result = (record or {}).get("result") or {}
    phase["llama_cpp"] = result
    phase["gpu_offload"] = result.get("gpu_offload")
    if not result or (not run.dry and phase["gpu_offload"] is not True):
        run.all_ok = False
    run.end()


def runtime_env(run: Run) -> dict[str, str]:
    """The steps' environment: LD_LIBRARY_PATH as the build phase's check found the build needs."""
    env = dict(run.env)
    dirs = (run.report["phases"].get("build") or {}).get("ld_library_path")
    if dirs:
        env["LD_LIBRARY_PATH"] = os.pathsep.join([*dirs, *filter(None, [env.get("LD_LIBRARY_PATH")])])
    return env


NOT_BUILT = (
    "no CUDA build of llama-cpp-python in WORK/site: run --phases build first (a fresh machine holds none)"
)


def cuda_built(run: Run) -> bool:
    return read_json(run.site / ".llama_cpp_build.json") is not None


def phase_tiny(run: Run) -> None:
    phase = run.begin("tiny", run.args.tiny_budget_s)
    if not run.dry and not cuda_built(run):
        run.skip("tiny", NOT_BUILT)
        run.end()
        return
    work = run.work / "tiny"
    shutil.rmtree(work, ignore_errors=True)
    toy, bundle = work / "toy", work / "bundle"
    # the same flags in a dry run, with the vision on the CPU (llama.cpp there warns that it keeps the layers)
    gpu = ["--vision-device", "cpu" if run.dry else "cuda", "--n-gpu-layers", "999"]
    phase["gpu_flags"] = gpu
    env = runtime_env(run)
    code = (
        "import json\nfrom pathlib import Path\nfrom panda_edge.toyworld.writer import generate\n"
        f"generate(Path({str(toy)!r}), videos={run.args.tiny_videos}, seed=3, heldout_fraction=0.5)\n"
        f"print(json.dumps({{'videos': {run.args.tiny_videos}}}))\n"
    )
    export = ["export", "--checkpoint", "tiny", "--out", bundle]
    steps: list[Callable[[], dict[str, Any] | None]] = [
        lambda: run.python("tiny_toyworld", code, env=env),
        lambda: run.panda("tiny_export_f32", [*export, "--target", "all", "--gguf-type", "f32"], env=env),
        lambda: run.panda("tiny_export_q8_0", [*export, "--target", "gguf", "--gguf-type", "q8_0"], env=env),
    ]
    for action in steps:  # each only after the one before it succeeded
        record = action()
        if record is None or record["exit"] != 0:
            run.skip("tiny_parity", "an earlier step failed")
            run.end()
            return
    # two calls, so a deadline that stops the task level keeps stab_fp16 and e2e (parity writes its
    # JSON at the end): the vision at fp16, the answers token for token, then task at each dtype
    report: dict[str, Any] = {}
    for name, levels in (("tiny_parity_e2e", "stab_fp16,e2e"), ("tiny_parity_task", "task")):
        args = ["parity", "--checkpoint", "tiny", "--bundle", bundle, "--levels", levels, "--qa"]
        args += [toy / "heldout.json", "--e2e-videos", str(run.args.tiny_e2e_videos), *gpu, "--json", "-"]
        record = run.panda(name, args, env=env, parse_stdout=True)
        report.update((record or {}).get("result") or {})
        phase.setdefault("parity_exit", {})[name] = (record or {}).get("exit")
    write_json(work / "parity.json", report)
    phase["parity"] = compact(report)
    phase["summary"] = {
        "parity_exit": phase["parity_exit"],
        "stab_fp16_cosine_min": _get(report, "stab_fp16", "cosine_min"),
        "e2e_identical": _get(report, "e2e", "identical_answers"),
        "e2e_videos": _get(report, "e2e", "videos"),
        "task_delta_points": {k: _get(report, k, "delta_points") for k in TASK_KEYS},
        "reference": report.get("reference"),
    }
    run.end()


@dataclass(frozen=True)
class Release:
    """The 7b phase's files: the random-weight checkpoint (preset full; tiny in a dry run), the bench
    clip, the bundle and the disk prefix cache."""

    preset: str
    checkpoint: Path
    clip: Path
    bundle: Path
    cache: Path

    @classmethod
    def of(cls, run: Run) -> Release:
        work = run.work / ("release-small" if run.dry else "7b")
        preset = "tiny" if run.dry else "full"
        return cls(preset, work / "checkpoint", work / "clip.mp4", work / "bundle", work / "prefix-cache")

    def written(self) -> bool:
        """The checkpoint (config.json is written last) and the clip are there."""
        return (self.checkpoint / "config.json").is_file() and self.clip.is_file()

    def write_argv(self) -> list[Any]:
        code = (
            "import json\nfrom pathlib import Path\n"
            "from panda_edge.bench.e2e import bench_video\n"
            "from panda_edge.bench.release import write_release_checkpoint\n"
            "from panda_edge.config import preset\n"
            f"info = write_release_checkpoint(Path({str(self.checkpoint)!r}), preset({self.preset!r}))\n"
            f"bench_video(Path({str(self.clip)!r}), (640, 320))\n"
            "print(json.dumps(info))\n"
        )
        return [sys.executable, "-c", code]


def start_prepare(run: Run) -> None:
    """`--prepare-7b`: the 7b phase's checkpoint and clip written in the background while this call
    builds (that process is mostly one core and the disk; the build has the others), so the 7b phase
    starts at the export."""
    release = Release.of(run)
    if release.written():
        return
    shutil.rmtree(release.checkpoint, ignore_errors=True)
    release.clip.parent.mkdir(parents=True, exist_ok=True)
    print("7b_write_checkpoint: started in the background", flush=True)
    env = {**runtime_env(run), "OMP_NUM_THREADS": "2"}  # leaves the build its cores
    run.prepare = run.launch("7b_write_checkpoint", release.write_argv(), env=env)


def finish_prepare(run: Run) -> None:
    """Wait for the background writer, if one runs (killed at the call's deadline), and record it."""
    if run.prepare is None:
        return
    phase = {"dry_run": run.dry, "steps": {}, "skipped": {}}
    run.report["phases"]["7b_prepare"] = phase
    limit = max(1.0, run.call_deadline - time.perf_counter())
    run.finish(run.prepare, phase, limit, parse_stdout=True)
    run.prepare = None


def phase_7b(run: Run) -> None:
    phase = run.begin("7b", run.args.budget_7b_s)
    release = Release.of(run)
    ckpt, bundle, clip, cache = release.checkpoint, release.bundle, release.clip, release.cache
    phase["model"] = f"random-weight Video-Panda in the released layout, preset {release.preset}"
    env = runtime_env(run)
    if not run.dry and not cuda_built(run):
        run.skip("7b", NOT_BUILT)
        if run.prepare is not None:  # no 7b in this call: the writer would only hold it to its deadline
            kill_session(run.prepare.proc.pid)
        finish_prepare(run)
        run.end()
        return
    finish_prepare(run)
    if release.written():
        phase["checkpoint"] = "written before (--prepare-7b or an earlier call)"
    else:
        shutil.rmtree(ckpt, ignore_errors=True)
        clip.parent.mkdir(parents=True, exist_ok=True)
        record = run.step("7b_write_checkpoint", release.write_argv(), env=env, parse_stdout=True)
        if record is None or record["exit"] != 0:
            run.skip("7b_export", "the checkpoint was not written")
            run.end()
            return
        phase["checkpoint"] = record.get("result")
    if (bundle / "manifest.json").is_file() and (bundle / f"llm.{GGUF_7B}.gguf").is_file():
        phase["bundle"] = "exported before"
    else:
        for stale in bundle.glob(".*tmp*"):  # an export stopped at a deadline leaves its f16 (13.5 GB)
            stale.unlink()
        args = ["export", "--target", "all", "--checkpoint", ckpt, "--out", bundle, "--gguf-type", GGUF_7B]
        record = run.panda("7b_export", args, env=env)
        if record is None or record["exit"] != 0:
            run.skip("7b_run", "the bundle was not exported")
            run.end()
            return
    phase["bundle_bytes"] = {p.name: p.stat().st_size for p in sorted(bundle.iterdir()) if p.is_file()}
    gpu_name = (run.report.get("machine") or {}).get("gpu") or ""
    planned = plan(run, bundle, env, "h200" if "H200" in gpu_name.upper() else "h100-80gb")
    vision = ["--vision", "torch", "--checkpoint", ckpt, "--device", "cpu" if run.dry else "cuda"]
    vision += ["--precision", "fp16", "--n-gpu-layers", "999"]
    phase["runtime_flags"] = [str(a) for a in vision]
    common = ["--bundle", bundle, "--gguf-type", GGUF_7B, "--n-ctx", str(N_CTX)]
    common += ["--max-new-tokens", str(MAX_NEW_TOKENS), *vision]
    first = run.panda(
        "7b_run",
        ["run", clip, QUESTIONS[0], *common, "--json", "-"],
        env=env,
        parse_stdout=True,
        poll_gpu=True,
    )
    shutil.rmtree(cache, ignore_errors=True)
    chat = run.panda(
        "7b_chat_cache",
        ["chat", clip, *common, "--cache", cache, "--json", "-"],
        stdin="\n".join(QUESTIONS) + "\n",
        env=env,
        parse_stdout=True,
    )
    restored = run.panda(
        "7b_run_from_disk",
        ["run", clip, QUESTIONS[0], *common, "--cache", cache, "--json", "-"],
        env=env,
        parse_stdout=True,
    )
    phase["summary"] = summarize_7b(first, chat, restored, planned)
    phase["vision_speed"] = vision_speed(run, ckpt, clip, env)
    run.end()


VISION_SPEED = """
import json, statistics, time, torch
from panda_edge.model.loading import ReferencePrecision
from panda_edge.model.static_stab import StabForOnnx
from panda_edge.model.vision import VisionTower
from panda_edge.video import load_video

cuda = torch.cuda.is_available()
device = "cuda" if cuda else "cpu"
tower = VisionTower.from_checkpoint({ckpt!r}, ReferencePrecision("fp16", device))
frames = torch.from_numpy(load_video({clip!r}, tower.config.vision))
static = StabForOnnx(tower.stab, tower.projector)
batch = frames.to(device, torch.float16)

def median_ms(fn, repeat=5):
    fn()
    times = []
    for _ in range(repeat):
        if cuda:
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize()
        times.append((time.perf_counter() - start) * 1e3)
    return round(statistics.median(times), 2)

result = {{"device": device, "dtype": "fp16", "frames": list(frames.shape)}}
with torch.inference_mode():
    result["encode_frames_eager_ms"] = median_ms(lambda: tower.encode_frames(frames))
    result["static_eager_ms"] = median_ms(lambda: static(batch))
    # inductor with CUDA graphs on the GPU; dynamo alone in a dry run
    for mode in ("reduce-overhead",) if cuda else ("eager-backend",):
        compiled = torch.compile(static, mode=mode) if cuda else torch.compile(static, backend="eager")
        start = time.perf_counter()
        compiled(batch)
        if cuda:
            torch.cuda.synchronize()
        result[f"compile_{{mode}}_s"] = round(time.perf_counter() - start, 1)
        result[f"static_compiled_{{mode}}_ms"] = median_ms(lambda: compiled(batch))
print(json.dumps(result))
"""


def vision_speed(run: Run, ckpt: Path, clip: Path, env: dict[str, str]) -> dict[str, Any] | None:
    """The torch vision backend's time per video at fp16 on the GPU: eager (what `--vision torch` runs)
    against the static graph compiled by torch.compile (inductor with CUDA graphs), with the compile's
    own time, so a compiled backend is added only if it earns its place."""
    code = VISION_SPEED.format(ckpt=str(ckpt), clip=str(clip))
    record = run.python("7b_vision_speed", code, env=env, timeout_s=150)
    return (record or {}).get("result")


def plan(run: Run, bundle: Path, env: dict[str, str], device: str) -> dict[str, Any] | None:
    """`panda plan` for this GPU (h200 or h100-80gb) with the run's GGUF type and context."""
    args = ["plan", "--device", device, "--bundle", bundle, "--gguf-type", GGUF_7B, "--n-ctx", str(N_CTX)]
    record = run.panda("7b_plan", [*args, "--json", "-"], env=env, parse_stdout=True, timeout_s=120)
    run.phase["plan_device"] = device  # type: ignore[index]
    return (record or {}).get("result")


def memory_check(used_mib: int | None, planned: dict[str, Any] | None, gguf_type: str) -> dict[str, Any]:
    """GPU memory used by the run (peak minus idle) against the plan's total for the GGUF type: the
    ratio and whether it is within 15%."""
    option = next((o for o in (planned or {}).get("options", []) if o.get("gguf_type") == gguf_type), None)
    planned_bytes = option["total_bytes"] if option else None
    used = None if used_mib is None else used_mib * 2**20
    ratio = None if used is None or not planned_bytes else round(used / planned_bytes, 3)
    return {
        "used_bytes": used,
        "planned_bytes": planned_bytes,
        "planned_parts_bytes": option.get("parts_bytes") if option else None,
        "ratio": ratio,
        "within_15pct": None if ratio is None else abs(ratio - 1) <= 0.15,
    }


def summarize_7b(
    first: dict[str, Any] | None,
    chat: dict[str, Any] | None,
    restored: dict[str, Any] | None,
    planned: dict[str, Any] | None,
) -> dict[str, Any]:
    """The numbers the issue asks for, from the steps' JSON (None where a step did not give them)."""
    answer = (first or {}).get("result") or {}
    turns = ((chat or {}).get("result") or {}).get("turns") or []
    disk = (restored or {}).get("result") or {}
    follow = turns[1] if len(turns) > 1 else {}
    computed = turns[0] if turns else {}
    return {
        "ttft_ms": answer.get("ttft_ms"),
        "decode_tok_s": answer.get("decode_tok_s"),
        "prompt_tokens": answer.get("prompt_tokens"),
        "answer_tokens": answer.get("tokens"),
        "first_prefix": answer.get("prefix"),
        "follow_up": {
            "prefix": follow.get("prefix"),
            "ttft_ms": follow.get("ttft_ms"),
            "from_memory": follow.get("prefix") == "memory",
        },
        "disk_cache": {
            "saved_by_turn": computed.get("prefix"),
            "prefix": disk.get("prefix"),
            "ttft_ms": disk.get("ttft_ms"),
            "from_disk": disk.get("prefix") == "disk",
            "same_answer": bool(computed)
            and disk.get("answer") == computed.get("answer")
            and disk.get("tokens") == computed.get("tokens"),
        },
        "gpu_memory": memory_check((first or {}).get("gpu_memory_used_mib"), planned, GGUF_7B),
        "peak_rss_mb": (first or {}).get("peak_rss_mb"),
    }


def compact(value: Any, max_items: int = 20) -> Any:
    """A report without its long lists (every prediction of the task level): their length instead."""
    if isinstance(value, dict):
        return {k: compact(v, max_items) for k, v in value.items()}
    if isinstance(value, list):
        return value if len(value) <= max_items else {"items": len(value)}
    return value


def _get(d: Any, *keys: str) -> Any:
    for k in keys:
        d = d.get(k) if isinstance(d, dict) else None
    return d


def print_summary(run: Run) -> None:
    phases = run.report["phases"]
    lines = [f"report: {run.report_path}" + (f" and {run.args.out}" if run.args.out else "")]
    machine_ = run.report.get("machine") or {}
    lines.append(
        f"gpu: {machine_.get('gpu')} ({machine_.get('gpu_memory_total')}), nvcc: {machine_.get('nvcc')}"
    )
    if "build" in phases:
        b = phases["build"]
        wall = _get(b, "steps", "cuda_build", "wall_s")
        lines.append(f"build: built={b.get('built')} wall={wall} s gpu_offload={b.get('gpu_offload')}")
    if "tiny" in phases:
        lines.append(f"tiny: {json.dumps(phases['tiny'].get('summary'))}")
    if "7b" in phases:
        lines.append(f"7b: {json.dumps(phases['7b'].get('summary'))}")
    for name, phase in phases.items():
        for step, reason in phase.get("skipped", {}).items():
            lines.append(f"skipped {name}/{step}: {reason}")
    print("\n".join(lines), flush=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--kit", type=Path, default=REPO / ".gpu-kit", help="the carried kit (pack.py)")
    parser.add_argument("--work", type=Path, default=REPO / ".gpu-work", help="where everything is written")
    parser.add_argument(
        "--phases", default="build,tiny", help=f"comma-separated subset of {','.join(PHASES)}"
    )
    parser.add_argument("--out", type=Path, help="also write the report here (e.g. $OUT/gpu_runtime.json)")
    parser.add_argument("--dry-run", action="store_true", help="the same flow without a GPU (see above)")
    parser.add_argument("--build-budget-s", type=float, default=BUDGETS_S["build"])
    parser.add_argument("--tiny-budget-s", type=float, default=BUDGETS_S["tiny"])
    parser.add_argument("--7b-budget-s", dest="budget_7b_s", type=float, default=BUDGETS_S["7b"])
    parser.add_argument(
        "--prepare-7b",
        action="store_true",
        help="write the 7b phase's checkpoint and clip in the background during this call's phases",
    )
    parser.add_argument(
        "--deadline-s",
        type=float,
        default=570.0,
        help="no step runs past this many seconds from the start (a device call is stopped at 600)",
    )
    parser.add_argument("--tiny-videos", type=int, default=10, help="toy-world videos (half held out)")
    parser.add_argument("--tiny-e2e-videos", type=int, default=4)
    args = parser.parse_args(argv)
    phases = [p for p in args.phases.split(",") if p]
    unknown = [p for p in phases if p not in PHASES]
    if unknown or not phases:
        parser.error(f"--phases: {', '.join(unknown) or 'none given'}; choose from {', '.join(PHASES)}")
    args.phases = phases
    try:
        manifest = load_kit(args.kit)
    except KitError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    start = time.perf_counter()
    run = Run(args)
    run.report["kit"] = {
        k: manifest.get(k) for k in ("llama_cpp_python", "wheels", "total_bytes", "limit_bytes")
    }
    install_wheels(run, args.kit, manifest)
    if args.prepare_7b:
        start_prepare(run)
    if "build" in phases:
        phase_build(run, args.kit, manifest)
    if "tiny" in phases:
        phase_tiny(run)
    if "7b" in phases:
        phase_7b(run)
    finish_prepare(run)
    run.call["wall_s"] = round(time.perf_counter() - start, 1)
    run.call["all_ok"] = run.all_ok
    run.save()
    print_summary(run)
    return 0 if run.all_ok else 1


if __name__ == "__main__":
    sys.exit(main())
