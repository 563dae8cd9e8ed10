"""Scores of learned models against ground truth."""

from .identifiability import correlation_matrix, linear_r2, mean_correlation_coefficient

__all__ = ["correlation_matrix", "linear_r2", "mean_correlation_coefficient"]
