"""Benchmark scripts: run one as `python benchmarks/<name>.py` or `python -m benchmarks.<name>` from the checkout; the
tests import them as `benchmarks.<name>` (pytest's `pythonpath = ["."]`)."""
