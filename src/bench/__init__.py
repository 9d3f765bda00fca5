"""Benchmarks, each run as `python -m src.bench.<name>` (detect: the loss-anomaly detector)."""
