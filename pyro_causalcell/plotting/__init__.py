"""Figures: training curves and latent-space views."""

from .latent import plot_latent, principal_components
from .training import plot_elbo

__all__ = ["plot_elbo", "plot_latent", "principal_components"]
