"""Benchmarks for clipwidgets: run them with `python -m benchmarks.run [--quick]` (see README.md)."""
