"""Benchmarks: each is `python -m bench.NAME` from the repository root; docs/benchmarks.md has the figures."""
