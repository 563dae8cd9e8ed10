"""Scale the log-density of every latent sample site (KL annealing / warm-up)."""

from __future__ import annotations

from pyro.poutine.messenger import Messenger


class LatentScaleMessenger(Messenger):
    r"""Multiply the scale of every *unobserved* sample site by ``weight``.

    Applied to both model and guide, the ELBO becomes
    :math:`\mathbb{E}_q[\log p(x\mid z)] - w\,\mathrm{KL}(q\,\|\,p)`: observed sites (counts,
    covariates, ``pyro.factor`` penalties) keep their scale, latent sites are down-weighted.
    This is KL warm-up for any model without the model knowing about it.

    Parameters
    ----------
    weight : float
        Non-negative multiplier; ``1.0`` leaves the program unchanged.
    """

    def __init__(self, weight: float):
        if weight < 0:
            raise ValueError(f"weight must be >= 0, got {weight}")
        super().__init__()
        self.weight = float(weight)

    def _process_message(self, msg):
        if msg["type"] == "sample" and not msg["is_observed"]:
            msg["scale"] = self.weight * msg["scale"]


def scale_latents(fn=None, weight: float = 1.0):
    """Functional form of :class:`LatentScaleMessenger` (``scale_latents(model, weight=0.1)``)."""
    messenger = LatentScaleMessenger(weight)
    return messenger if fn is None else messenger(fn)
