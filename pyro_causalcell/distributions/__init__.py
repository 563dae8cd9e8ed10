"""Count likelihoods with fast, numerically stable ``log_prob``."""

from .negative_binomial import NegativeBinomial, ZeroInflatedNegativeBinomial

__all__ = ["NegativeBinomial", "ZeroInflatedNegativeBinomial"]
