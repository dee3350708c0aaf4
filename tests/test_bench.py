"""The benchmark report's arithmetic and chart, and the commands run small (speed itself is measured by
`panda bench`, never here)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from panda_edge.bench.all import ANSWER_TOKENS, TEXT_TOKENS, VISUAL_TOKENS, goals, plot, roofline, stages
from panda_edge.cli.main import app
from panda_edge.host import memory_bandwidth_gbs
from panda_edge.optional import has_llama_cpp

VISION = {
    "vision": {
        "torch": {"median_ms": 4000.0},
        "ort": {"median_ms": 2000.0},
        "ort_int8": {"median_ms": 1000.0},
    }
}
LLM = {
    "llm": {
        "transformers": {"prefill_tok_s": 100.0, "decode_tok_s": 2.0},
        "llama.cpp-q8_0": {"prefill_tok_s": 200.0, "decode_tok_s": 8.0, "gguf_bytes": 500_000_000},
    },
    "model": {"parameters": 250_000_000},
    "ratios_vs_transformers": {"llama.cpp-q8_0": {"prefill_x": 2.0, "decode_x": 4.0}},
}
MACHINE = {"memory_bandwidth_gbs": 10.0, "fp32_matmul_gflops": 100.0, "cpu": "test cpu"}


def test_stages_add_vision_prefill_and_decode_per_backend() -> None:
    table = stages(VISION["vision"], LLM["llm"])
    assert table["PyTorch (torch + transformers)"] == {
        "vision_s": 4.0,
        "prefill_s": round((VISUAL_TOKENS + TEXT_TOKENS) / 100, 2),
        "decode_s": ANSWER_TOKENS / 2,
    }
    assert table["ort_int8 + llama.cpp-q8_0"]["vision_s"] == 1.0
    assert len(table) == 1 + 2  # two runtime vision backends x one llama.cpp type


def test_roofline_sets_each_number_against_this_machines_limit() -> None:
    lines = roofline(VISION, LLM, MACHINE, gflop=200.0)
    assert lines["vision"]["fp32_gemm_bound_ms"] == 2000.0  # 200 GFLOP at 100 GFLOP/s
    assert lines["vision"]["fraction_of_bound"]["ort"] == 1.0
    q8 = lines["decode"]["llama.cpp-q8_0"]
    assert q8["bandwidth_bound_tok_s"] == 20.0 and q8["fraction_of_bound"] == 0.4  # 10 GB/s / 0.5 GB
    assert lines["decode"]["transformers"]["bandwidth_bound_tok_s"] == 10.0  # fp32: 4 bytes per weight
    assert lines["prefill"]["fp32_gemm_bound_tok_s"] == 200.0  # 100 GFLOP/s / (2 x 250M)


def test_goals_and_chart(tmp_path: Path) -> None:
    result = {
        "stages": stages(VISION["vision"], LLM["llm"]),
        "e2e": {
            "torch": {"ttft_first_ms": 900.0, "ttft_followup_ms": 950.0},
            "runtime": {"ttft_first_ms": 500.0, "ttft_followup_ms": 20.0},
        },
        "ratios": {
            "vision_vs_torch": {"torch": 1.0, "ort": 2.0, "ort_int8": 4.0},
            "llm_vs_transformers": LLM["ratios_vs_transformers"],
            "e2e": {"runtime_followup_vs_first_ttft": 0.04},
        },
        "gguf_memory": {"ratio_peak_rss_to_checkpoint": 0.18},
        "machine": MACHINE,
        "threads": 2,
    }
    verdicts = goals(result)
    assert set(verdicts) >= {"vision_int8_3x_torch", "gguf_conversion_peak_rss_below_25pct"}
    assert all(v["met"] for v in verdicts.values())
    pytest.importorskip("matplotlib", reason="matplotlib draws the chart (pip install 'panda-edge[bench]')")
    plot(result, str(tmp_path / "bench.png"))
    assert (tmp_path / "bench.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_memory_bandwidth_is_measured() -> None:
    assert memory_bandwidth_gbs(megabytes=16, repeat=2) > 0.1


def test_vision_flops_are_counted() -> None:
    from panda_edge.bench.machine import vision_gflop_per_video

    assert vision_gflop_per_video("tiny") > 0


def test_a_childs_peak_memory_is_its_own_not_its_parents() -> None:
    """Inside `panda bench all` the parent holds GBs; ru_maxrss would report that for every child."""
    import numpy as np

    from panda_edge.bench.gguf_memory import child_peak_rss

    held = np.ones(60_000_000)  # 480 MB in this process
    small, _, _ = child_peak_rss(["-c", "pass"])
    big, _, out = child_peak_rss(["-c", "import numpy; a = numpy.ones(40_000_000); print(a.size)"])
    assert small < 300 < 320 <= big and out.strip() == "40000000"
    del held


# --- a time too short for the timer: None with the reason, never a division by it -------------------


def _strict(report: object) -> object:
    """The report as the CLI writes it: strict JSON, so a NaN or infinity fails here."""
    import json

    return json.loads(json.dumps(report, allow_nan=False))


def test_sub_resolution_gemm_gives_a_null_ratio_with_its_reason() -> None:
    """A fast CPU runs the tiny GEMM in less than the old rounding kept (0.0 ms), then divided by it."""
    from panda_edge.bench.vision import gemm_report
    from panda_edge.timing import BELOW_RESOLUTION

    report = _strict(gemm_report({"fp32": [0.0, 0.0, 0.0], "int8_u8s8": [2e-5] * 3}, rows=8, width=16))
    assert report["ratio_int8_vs_fp32"] is None and report["fp32_gop_s"] is None
    assert report["unmeasured"] == {"ratio_int8_vs_fp32": BELOW_RESOLUTION, "fp32_gop_s": BELOW_RESOLUTION}
    assert report["int8_u8s8_median_ms"] == 0.02 and report["int8_u8s8_gop_s"] > 0


def test_ratios_use_unrounded_times() -> None:
    """0.04 ms and 0.02 ms both rounded to 0.0 at 0.1 ms; their ratio is 2, not a ZeroDivisionError."""
    from panda_edge.bench.vision import ratios, summary_ms

    times = {"torch": [4e-5], "ort": [2e-5]}
    assert ratios(times, {"ratio_ort_vs_torch": ("torch", "ort")}) == {"ratio_ort_vs_torch": 2.0}
    assert summary_ms(times["ort"])["median_ms"] == 0.02  # significant digits: never rounded to 0


def test_llm_and_e2e_rates_of_a_zero_time_are_null() -> None:
    from panda_edge.bench.e2e import summarize
    from panda_edge.bench.llm import _summary

    llm = _strict(_summary([0.0], [0.5], prompt=128, new=64))
    assert (
        llm["prefill_tok_s"] is None and llm["decode_tok_s"] == 128.0 and "prefill_tok_s" in llm["unmeasured"]
    )
    runs = [{"first": 0.0, "followup": 0.0, "decode_tok_s": None, "tokens": 1}]
    e2e = _strict(summarize(runs, peak_rss=100.0))
    assert e2e["ttft_first_ms"] is None and e2e["decode_tok_s"] is None
    assert set(e2e["unmeasured"]) == {"ttft_first_ms", "ttft_followup_ms", "decode_tok_s"}


def test_report_arithmetic_carries_a_missing_number_through() -> None:
    """An unmeasured rate (None) gives None in every number built on it, and goals are not met."""
    llm = {
        "llm": {
            "transformers": {"prefill_tok_s": None, "decode_tok_s": 2.0},
            "llama.cpp-q8_0": {"prefill_tok_s": 200.0, "decode_tok_s": None, "gguf_bytes": 500_000_000},
        },
        "model": {"parameters": 250_000_000},
    }
    machine = {**MACHINE, "fp32_matmul_gflops": None}
    lines = _strict(roofline(VISION, llm, machine, gflop=200.0))
    assert lines["vision"]["fp32_gemm_bound_ms"] is None and lines["prefill"]["fp32_gemm_bound_tok_s"] is None
    assert lines["decode"]["llama.cpp-q8_0"]["fraction_of_bound"] is None
    table = _strict(stages(VISION["vision"], llm["llm"]))
    assert table["PyTorch (torch + transformers)"]["prefill_s"] is None
    verdicts = goals(
        {
            "ratios": {
                "vision_vs_torch": {"torch": 1.0, "ort_int8": None},
                "llm_vs_transformers": {"llama.cpp-q8_0": {"prefill_x": None, "decode_x": None}},
                "e2e": {"runtime_followup_vs_first_ttft": None},
            }
        }
    )
    assert not any(v["met"] for v in verdicts.values())


def test_json_output_refuses_nan_naming_the_key(tmp_path: Path) -> None:
    from panda_edge.cli._common import emit_json

    with pytest.raises(ValueError, match=r"vision\.ort\.median_ms = nan"):
        emit_json({"vision": {"ort": {"median_ms": float("nan")}}}, tmp_path / "out.json")
    assert not (tmp_path / "out.json").exists()


# --- the commands, as a user runs them (tiny sizes; the speeds themselves are not checked) ----------


@pytest.mark.skipif(
    not has_llama_cpp(), reason="llama-cpp-python is not installed (pip install 'panda-edge[llama]')"
)
def test_bench_llm_through_the_cli() -> None:
    """One layer of the bench Llama (its 32000 x 2048 embeddings dominate: ~30 s, ~1 GB)."""
    result = CliRunner().invoke(app, ["bench", "llm", "--layers", "1", "--repeat", "1", "--json", "-"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert {"transformers", "llama.cpp-f16", "llama.cpp-q8_0"} <= set(report["llm"])
    for numbers in report["llm"].values():
        assert len(numbers["decode_runs_s"]) == 1 and numbers["decode_runs_s"][0] > 0
        assert numbers["decode_tok_s"] is None or numbers["decode_tok_s"] > 0


def test_bench_all_refuses_an_unknown_model_before_any_work() -> None:
    """The full `panda bench all` does not fit a test: the full-size STAB at least 3 times, the 8-layer
    0.54B bench Llama in transformers and llama.cpp, and a full-width GGUF conversion take minutes and
    several GB here. Its option checks run first, through the CLI."""
    result = CliRunner().invoke(app, ["bench", "all", "--e2e-model", "huge", "--repeat", "1"])
    assert result.exit_code == 2 and "unknown e2e model 'huge'" in result.stderr
    assert "Traceback" not in result.output
