"""Poutine messengers used by the engines: latent scaling (KL warm-up)."""

from .latent_scale import LatentScaleMessenger, scale_latents

__all__ = ["LatentScaleMessenger", "scale_latents"]
