"""The benchmark report's arithmetic and chart (speed itself is measured by `panda bench`, never here)."""

from __future__ import annotations

from pathlib import Path

import pytest

from panda_edge.bench.all import ANSWER_TOKENS, TEXT_TOKENS, VISUAL_TOKENS, goals, plot, roofline, stages
from panda_edge.bench.machine import memory_bandwidth_gbs

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
