"""Benchmarks that reproduce published evaluations end to end (simulate, fit, score)."""

from .sparse_shift import MODELS, SparseShiftBenchmark, sparse_shift_benchmark

__all__ = ["MODELS", "SparseShiftBenchmark", "sparse_shift_benchmark"]
