"""`build_engine.sh`: the bundle's engine built with `trtexec` on the device, then recorded (pure).

For a device where the TensorRT Python bindings are not at hand (or `trtexec` is preferred): the
script checks that the installed TensorRT reads the bundle's graphs, runs the same build as
`panda build-engine` through `trtexec`, keeps its log, and hands engine and log to
`panda build-engine --register`, which names the engine for the GPU and adds it to the manifest.
"""

from __future__ import annotations

import shlex

from panda_edge import __version__
from panda_edge.backends import PRECISIONS, TRT, TRT_TARGETS, default_precision, trt_target
from panda_edge.bundle import Manifest
from panda_edge.errors import BundleError
from panda_edge.trt.build_recipe import DEFAULT_WORKSPACE_MB, recipe_for, trtexec_command

SCRIPT_FILE = "build_engine.sh"
DEFAULT_PRECISION = default_precision(TRT)


def trtexec_engine_name(precision: str) -> str:
    """What trtexec saves; `--register` renames it to `stab.<gpu>.<precision>.engine`."""
    return f"stab.trtexec.{precision}.engine"


def log_name(precision: str) -> str:
    return f"build_engine.{precision}.log"


def build_script(manifest: Manifest) -> str:
    """The script's text for the bundle's profile; precisions whose graph is missing say how to make it."""
    family = trt_target(str(manifest.profile))
    others = "\n".join(f"#   {f.platform}: --trt-profile {f.profile}" for f in TRT_TARGETS.values())
    cases = []
    for precision in PRECISIONS[TRT]:
        try:
            recipe = recipe_for(manifest, family, precision, bundle="this bundle")
        except BundleError as exc:
            cases.append(
                f"  {precision})\n    echo {shlex.quote(f'build_engine.sh: {exc}')} >&2\n    exit 2 ;;"
            )
            continue
        engine, log = trtexec_engine_name(precision), log_name(precision)
        # Shell variables stand in for the values a user may change; the rest are plain file names.
        command = trtexec_command(recipe, engine, '"$workspace"', '"$cache"', '"$trtexec"')
        line = " ".join(command)
        cases.append(
            f"  {precision})\n    {line} 2>&1 | tee {log}\n    register {precision} {engine} {log} ;;"
        )
    return _TEMPLATE.format(
        version=__version__,
        profile=family.profile,
        family=family.label,
        platform=family.platform,
        major=family.major,
        others=others,
        default=DEFAULT_PRECISION,
        precisions="|".join(PRECISIONS[TRT]),
        workspace=DEFAULT_WORKSPACE_MB,
        cases="\n".join(cases),
    )


_TEMPLATE = """#!/usr/bin/env bash
# Builds this bundle's TensorRT engine with trtexec on the device that will run it, then records it in
# manifest.json: an engine is specific to one GPU model and one TensorRT release, so it is built there.
# Written by panda-edge {version} (panda export --target trt). With TensorRT's Python bindings and
# cuda-python installed, `panda build-engine --bundle DIR` does the same without trtexec.
#
# The graphs here are for {family}, profile {profile}: {platform}.
# Other TensorRT releases need another export (panda export --target trt --trt-profile P):
{others}
#
# usage: ./build_engine.sh [{precisions}]   (default {default})
# environment: TRTEXEC (default: trtexec on PATH, else /usr/src/tensorrt/bin/trtexec, where JetPack puts it)
#              WORKSPACE_MB (builder workspace, default {workspace}), TIMING_CACHE (default timing.cache)
#              PANDA (the panda command, default panda)
set -euo pipefail
cd "$(dirname "$0")"
precision="${{1:-{default}}}"
trtexec="${{TRTEXEC:-$(command -v trtexec || echo /usr/src/tensorrt/bin/trtexec)}}"
workspace="${{WORKSPACE_MB:-{workspace}}}"
cache="${{TIMING_CACHE:-timing.cache}}"
panda="${{PANDA:-panda}}"

if [ ! -x "$trtexec" ]; then
  echo "build_engine.sh: trtexec not found; set TRTEXEC=/path/to/trtexec" \\
    "(JetPack: /usr/src/tensorrt/bin/trtexec)" >&2
  exit 2
fi
# trtexec's first line names its TensorRT: [TensorRT v8502] (8.5.2) or [TensorRT v100300] (10.3.0).
code="$("$trtexec" --help 2>&1 | sed -n 's/.*\\[TensorRT v\\([0-9][0-9]*\\)\\].*/\\1/p' | head -n 1)"
if [ -n "$code" ]; then
  if [ "$code" -ge 10000 ]; then major=$((code / 10000)); else major=$((code / 1000)); fi
  if [ "$major" != "{major}" ]; then
    echo "build_engine.sh: these graphs are for {family} (profile {profile})," \\
      "but $trtexec is TensorRT $major.x; export again for this device (see the top of this script)" >&2
    exit 2
  fi
fi

register() {{
  if command -v "$panda" >/dev/null 2>&1; then
    "$panda" build-engine --bundle . --precision "$1" --register "$2" --trtexec-log "$3"
  else
    echo "built $2; record it in the manifest with (panda-edge installed):" >&2
    echo "  panda build-engine --bundle $(pwd) --precision $1 --register $2 --trtexec-log $3" >&2
  fi
}}

case "$precision" in
{cases}
  *)
    echo "usage: $0 [{precisions}]" >&2
    exit 2 ;;
esac
"""
