r"""Free bits: a training objective that stops latent coordinates from being switched off.

A fit can settle where some latent coordinates carry no information about the cells (their
posterior equals the prior, :func:`~pyro_causalcell.metrics.inactive_latents`): once a
coordinate's KL term is near zero, its gradient keeps it there. Free bits (Kingma et al. 2016,
"Improved variational inference with inverse autoregressive flow", Eq. 15) leaves the first
:math:`\lambda` nats of each coordinate's KL term free of charge, per cell and averaged over the
minibatch:

.. math::
    \tilde{\mathcal{L}} = \mathbb{E}_q[\log p(x \mid z)]
    - \sum_k \max\Big(\lambda\,B,\ \sum_{b=1}^{B} \big(\log q(z_{bk}) - \log p(z_{bk})\big)\Big),

for the per-cell latent sites (those inside the ``"cells"`` plate), each cell's terms weighted
by the site's scale as in the ELBO (minibatch scaling, KL warm-up); every other site enters as
in the ELBO. With :math:`\lambda = 0` this is the ELBO only where each coordinate's summed estimate
is positive, so ``fit`` uses :class:`~pyro_causalcell.infer.elbo.DeviceTraceELBO` for
``free_bits=0``. :math:`\tilde{\mathcal{L}} \le` ELBO, so the validation ELBO ``fit`` reports is
computed without free bits.
"""

from __future__ import annotations

import torch
from pyro.distributions import Independent

from .. import sites
from ..distributions.coordinate_mixture import CoordinateMixture
from .elbo import DeviceTraceELBO, reparameterised

__all__ = ["FreeBitsELBO", "coordinate_log_prob"]


def coordinate_log_prob(fn, value: torch.Tensor) -> torch.Tensor:
    """Log density of each coordinate of ``value`` under a coordinate-wise distribution.

    Parameters
    ----------
    fn : Distribution
        Independent over its coordinates: ``Independent`` / ``.to_event`` wrappers of a
        distribution with scalar events, or a :class:`CoordinateMixture` of such.
    value : tensor of shape ``fn.batch_shape + fn.event_shape``

    Returns
    -------
    tensor of shape ``fn.batch_shape + fn.event_shape``
        Summing it over the event dimensions gives ``fn.log_prob(value)``.
    """
    name = type(fn).__name__
    while isinstance(fn, Independent):
        fn = fn.base_dist
    if isinstance(fn, CoordinateMixture):
        return fn.coordinate_log_prob(value)
    if fn.event_shape:
        raise ValueError(f"free bits need a density per latent coordinate, but {name} has "
                         f"events of shape {tuple(fn.event_shape)} that do not factorise; "
                         "use free_bits=0 with this model")
    return fn.log_prob(value)


def _in_cells_plate(site: dict) -> bool:
    return any(frame.name == sites.CELLS for frame in site["cond_indep_stack"])


def _cell_weights(site: dict, batch_shape: torch.Size, like: torch.Tensor) -> torch.Tensor:
    """Each cell's weight in the site's log density (its scale times its mask), ``batch_shape``."""
    weight = torch.as_tensor(site["scale"], dtype=like.dtype, device=like.device)
    mask = site["mask"]
    if mask is not None and mask is not True:
        weight = weight * torch.as_tensor(mask, dtype=like.dtype, device=like.device)
    return weight.expand(batch_shape)


def _free_bits_term(model_site: dict, guide_site: dict, free_bits: float) -> torch.Tensor:
    """:math:`\\sum_k \\max(\\lambda \\sum_b w_b,\\ \\sum_b w_b (\\log q - \\log p)_{bk})` of one
    per-cell latent site, with :math:`w_b` each cell's scale (minibatch and KL weights)."""
    value, fn = guide_site["value"], guide_site["fn"]
    n_batch = value.dim() - len(fn.event_shape)
    batch_shape, coordinates = value.shape[:n_batch], (1,) * len(fn.event_shape)
    q_weight = _cell_weights(guide_site, batch_shape, value)
    p_weight = _cell_weights(model_site, batch_shape, value)
    kl = (q_weight.reshape(batch_shape + coordinates) * coordinate_log_prob(fn, value)
          - p_weight.reshape(batch_shape + coordinates)
          * coordinate_log_prob(model_site["fn"], value))
    per_coordinate = kl.sum(tuple(range(n_batch))) if n_batch else kl
    return torch.maximum(per_coordinate, free_bits * q_weight.sum()).sum()


class FreeBitsELBO(DeviceTraceELBO):
    """The ELBO with the first ``free_bits`` nats per cell of each latent coordinate's KL term
    free (see the module's docstring).

    Parameters
    ----------
    free_bits : float
        :math:`\\lambda`, nats per cell and latent coordinate; must be > 0.
    **kwargs
        As :class:`pyro.infer.Trace_ELBO` (``num_particles``, ...).
    """

    def __init__(self, free_bits: float, **kwargs):
        if not free_bits > 0:
            raise ValueError(f"free_bits must be > 0 nats, got {free_bits}; use "
                             "DeviceTraceELBO() for the ELBO itself")
        super().__init__(**kwargs)
        self.free_bits = float(free_bits)

    def _particle_loss(self, model_trace, guide_trace) -> torch.Tensor:
        total = 0.0
        freed = set()
        for name, site in guide_trace.nodes.items():
            if site["type"] != "sample":
                continue
            if not reparameterised(site):
                raise ValueError(f"free bits need a reparameterised guide, but site {name!r} "
                                 "is not; use free_bits=0 with this model")
            if _in_cells_plate(site):
                total = total + _free_bits_term(model_trace.nodes[name], site, self.free_bits)
                freed.add(name)
            else:
                total = total + site["log_prob_sum"]
        for name, site in model_trace.nodes.items():
            if site["type"] == "sample" and name not in freed:
                total = total - site["log_prob_sum"]
        return total
