"""Benchmarks that reproduce published evaluations end to end (simulate, fit, score)."""

from .ceiling import supervised_ceiling
from .sparse_shift import MODELS, SparseShiftBenchmark, sparse_shift_benchmark

__all__ = ["MODELS", "SparseShiftBenchmark", "sparse_shift_benchmark",
           "supervised_ceiling"]
