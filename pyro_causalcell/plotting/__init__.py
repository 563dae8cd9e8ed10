"""Figures: training curves, latent-space views, perturbation-target heatmaps and
counterfactual-vs-observed comparisons."""

from .counterfactual import log_normalise, plot_counterfactual, plot_fold_change_agreement
from .latent import plot_latent, principal_components
from .targets import plot_targets
from .training import plot_elbo

__all__ = ["plot_elbo", "plot_latent", "principal_components", "plot_targets",
           "plot_counterfactual", "plot_fold_change_agreement", "log_normalise"]
