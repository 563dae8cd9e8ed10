"""The ELBO estimator ``fit`` uses by default: Pyro's ``Trace_ELBO`` without host reads.

Pyro's ``Trace_ELBO.differentiable_loss`` adds up each site's log-density as a Python number
(``.item()`` per site) and checks the total for NaN, so every training step waits for the
device several times. When every latent site of the guide is reparameterised (all models here)
the surrogate loss *is* the negative ELBO, so this estimator sums the sites' log-densities as
tensors and returns the same value and gradient with no host read; a guide with a
non-reparameterised site (a score-function term) takes Pyro's computation unchanged.
"""

from __future__ import annotations

import torch
from pyro.distributions.util import is_identically_zero
from pyro.infer import Trace_ELBO

__all__ = ["DeviceTraceELBO"]


class DeviceTraceELBO(Trace_ELBO):
    """``Trace_ELBO`` whose differentiable loss never leaves the device.

    Same constructor as :class:`pyro.infer.Trace_ELBO` (``num_particles``, ...).
    """

    def differentiable_loss(self, model, guide, *args, **kwargs) -> torch.Tensor:
        loss = 0.0
        for model_trace, guide_trace in self._get_traces(model, guide, args, kwargs):
            loss = loss + self._particle_loss(model_trace, guide_trace) / self.num_particles
        return loss

    def _particle_loss(self, model_trace, guide_trace) -> torch.Tensor:
        """The loss of one particle's traces (subclasses change the objective here)."""
        return _particle_loss(self, model_trace, guide_trace)


def _particle_loss(elbo: Trace_ELBO, model_trace, guide_trace) -> torch.Tensor:
    """Negative ELBO of one particle, summed as tensors when the guide is reparameterised."""
    guide_sites = [site for site in guide_trace.nodes.values() if site["type"] == "sample"]
    if not all(reparameterised(site) for site in guide_sites):
        _, surrogate = elbo._differentiable_loss_particle(model_trace, guide_trace)
        return surrogate
    total = 0.0
    for site in model_trace.nodes.values():
        if site["type"] == "sample":
            total = total + site["log_prob_sum"]
    for site in guide_sites:
        total = total - site["log_prob_sum"]
    return -total


def reparameterised(site: dict) -> bool:
    """The site's gradient is its log-density's (no score-function term, no dropped entropy)."""
    _, score_function, entropy = site["score_parts"]
    return is_identically_zero(score_function) and not is_identically_zero(entropy)
