"""Benchmarks side by side with PyTorch (`wsd bench`; results in docs/PERF.md)."""
