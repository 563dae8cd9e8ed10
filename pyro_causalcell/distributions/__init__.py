"""Count likelihoods with fast, numerically stable ``log_prob``, and the latent shift mixture of
perturbed cells, and the coordinate mixture of a soft intervention."""

from .coordinate_mixture import CoordinateMixture
from .negative_binomial import NegativeBinomial, ZeroInflatedNegativeBinomial
from .shift_mixture import (ShiftMixture, active_perturbations, shift_mixture,
                            shift_mixture_log_prob)

__all__ = ["NegativeBinomial", "ZeroInflatedNegativeBinomial", "ShiftMixture", "shift_mixture",
           "shift_mixture_log_prob", "active_perturbations", "CoordinateMixture"]
