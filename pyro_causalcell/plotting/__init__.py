"""Figures: training curves, latent-space views and perturbation-target heatmaps."""

from .latent import plot_latent, principal_components
from .targets import plot_targets
from .training import plot_elbo

__all__ = ["plot_elbo", "plot_latent", "principal_components", "plot_targets"]
