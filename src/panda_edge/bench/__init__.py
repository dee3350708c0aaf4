"""Benchmarks behind `panda bench` (timings are measured here, never asserted in tests)."""
