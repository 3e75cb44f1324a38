"""Benchmark scripts (run as ``python -m benchmarks.NAME``); never collected as tests."""
