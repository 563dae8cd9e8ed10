r"""Stochastic (soft) interventions: replace a site's mechanism on a mask of coordinates.

For a site :math:`z \in \mathbb{R}^K` with mechanism :math:`p(z)` factorised over coordinates,
the intervention with new mechanism :math:`\tilde p` on targets :math:`m \in \{0, 1\}^K` gives

.. math::
    p_m(z) = \prod_k \tilde p(z_k)^{m_k}\, p(z_k)^{1 - m_k}.

Masks may be batched (one per cell) and real-valued in [0, 1]: a relaxed or straight-through
mask interpolates, which keeps gradients to the mask. Hard interventions on covariates stay
``pyro.do``; this handler is for latent mechanisms (a perturbation shifting its target latents,
a user's new mechanism on a fitted model).
"""

from __future__ import annotations

from collections.abc import Callable

import pyro.distributions as dist
import torch
from pyro.distributions import TorchDistribution
from pyro.poutine.messenger import Messenger

from ..distributions import CoordinateMixture

Mechanism = TorchDistribution | Callable[[TorchDistribution], TorchDistribution]


def _factors(fn: TorchDistribution) -> tuple[TorchDistribution, int]:
    """The coordinate-wise distribution under ``.to_event(n)`` and ``n``."""
    if isinstance(fn, dist.Independent):
        return fn.base_dist, fn.reinterpreted_batch_ndims
    return fn, 0


def intervene_on_coordinates(fn: TorchDistribution, mechanism: Mechanism,
                             mask: torch.Tensor) -> TorchDistribution:
    """``fn`` with its masked coordinates following ``mechanism``.

    Two Normal mechanisms give a Normal with interpolated location and scale (exact for 0/1
    masks), which keeps the site a location-scale family for noise abduction; any other pair
    gives a :class:`CoordinateMixture`.
    """
    is_distribution = isinstance(mechanism, torch.distributions.Distribution)
    new = mechanism if is_distribution else mechanism(fn)
    base, event_dim = _factors(fn)
    replacement, new_event_dim = _factors(new)
    if new_event_dim != event_dim:
        new_event_dim = event_dim  # a mechanism given without .to_event
    if type(base) is dist.Normal and type(replacement) is dist.Normal:
        mask = mask.to(base.loc.dtype)
        loc = base.loc + mask * (replacement.loc - base.loc)
        scale = base.scale + mask * (replacement.scale - base.scale)
        return dist.Normal(loc, scale).to_event(event_dim)
    return CoordinateMixture(base, replacement, mask, event_dim)


class StochasticInterventionMessenger(Messenger):
    """Replace the mechanism of sample site ``site`` on the coordinates where ``mask`` is 1.

    Parameters
    ----------
    site : str
        Name of the sample site (e.g. ``"z"``).
    mechanism : distribution or callable
        The new mechanism, or a function of the site's current distribution returning it
        (e.g. ``lambda fn: dist.Normal(fn.mean + 2.0, 1.0).to_event(1)``).
    mask : tensor in [0, 1]
        Targets, broadcastable to the site's ``batch_shape + event_shape`` (e.g. ``(K,)`` for
        all cells, or ``(cells, K)``).

    Examples
    --------
    >>> with StochasticInterventionMessenger("z", dist.Normal(3.0, 1.0), mask=targets):
    ...     trace = poutine.trace(model.model).get_trace(batch)  # doctest: +SKIP
    """

    def __init__(self, site: str, mechanism: Mechanism, mask: torch.Tensor):
        super().__init__()
        self.site, self.mechanism, self.mask = site, mechanism, torch.as_tensor(mask)

    def _pyro_sample(self, msg) -> None:
        if msg["name"] != self.site or msg["is_observed"]:
            return
        msg["fn"] = intervene_on_coordinates(msg["fn"], self.mechanism, self.mask)


def stochastic_intervention(fn=None, *, site: str, mechanism: Mechanism, mask: torch.Tensor):
    """Functional form of :class:`StochasticInterventionMessenger`."""
    messenger = StochasticInterventionMessenger(site, mechanism, mask)
    return messenger if fn is None else messenger(fn)
