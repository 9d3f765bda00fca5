"""Benchmarks of dropsweep: `python -m benchmarks.<name>` (the Makefile's bench-* targets)."""
