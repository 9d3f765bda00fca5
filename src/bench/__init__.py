"""Benchmarks with known answers: `python -m src.bench.detect` scores the loss-anomaly detector."""
