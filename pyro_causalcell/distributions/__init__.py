"""Count likelihoods with fast, numerically stable ``log_prob``, and the latent shift mixture of
perturbed cells."""

from .negative_binomial import NegativeBinomial, ZeroInflatedNegativeBinomial
from .shift_mixture import active_perturbations, shift_mixture

__all__ = ["NegativeBinomial", "ZeroInflatedNegativeBinomial", "shift_mixture",
           "active_perturbations"]
