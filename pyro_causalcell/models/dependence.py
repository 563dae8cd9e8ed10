r"""Differentiable dependence penalties between a model's latent blocks.

**Block total correlation** (minibatch-weighted sampling, Chen et al., 2018): for blocks
:math:`z = (z_1, \dots, z_K)` with a factorised Gaussian posterior :math:`q(z \mid x)`,

.. math::
    \mathrm{TC} = \mathbb{E}_{q(z)}\Big[\log q(z) - \sum_k \log q(z_k)\Big], \qquad
    \log q(z_i) \approx \log \sum_{j \in B} q(z_i \mid x_j) - \log(N |B|),

where the aggregate posterior :math:`q(z)` of the :math:`N` cells is estimated from a minibatch
:math:`B` (same for each block's marginal). It is zero when the blocks are independent in the
aggregate posterior; a model penalises it to keep, e.g., inVAE's invariant and spurious blocks
from sharing information. The estimate is per cell, so it can sit in the cells plate.

**Conditional HSIC**: :func:`conditional_hsic` averages the normalised HSIC
(:mod:`pyro_causalcell.kernels`) within the groups of a conditioning covariate, an estimate of
dependence *given* that covariate: inVAE penalises the invariant block's dependence on the technical domain given
the biology, which is what conditional invariance asks (:math:`z_{inv} \perp d \mid y`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from ..kernels import gaussian_kernel, grouped_hsic

__all__ = ["block_total_correlation", "conditional_hsic"]


def block_total_correlation(samples: Sequence[torch.Tensor], locs: Sequence[torch.Tensor],
                            scales: Sequence[torch.Tensor], n_cells: int) -> torch.Tensor:
    """Per-cell minibatch-weighted estimate of the total correlation between latent blocks.

    Parameters
    ----------
    samples, locs, scales : sequences of (batch, n_latent_k) tensors
        Each block's reparameterised posterior sample and its Gaussian posterior's parameters,
        for the same minibatch of cells.
    n_cells : int
        Cells in the whole data set (:math:`N`).

    Returns
    -------
    (batch,) tensor
        :math:`\\log q(z_i) - \\sum_k \\log q(z_{k,i})`; its mean estimates the total
        correlation (biased for small batches; differentiable in everything).
    """
    if not len(samples) == len(locs) == len(scales) >= 2:
        raise ValueError("total correlation needs the sample, loc and scale of at least two "
                         f"blocks; got {len(samples)}, {len(locs)}, {len(scales)}")
    batch = samples[0].shape[0]
    per_block = [
        # (batch_i, batch_j): log q(z_k,i | x_j), summed over the block's coordinates
        torch.distributions.Normal(loc.unsqueeze(0), scale.unsqueeze(0))
        .log_prob(z.unsqueeze(1)).sum(-1)
        for z, loc, scale in zip(samples, locs, scales)]
    log_normaliser = math.log(n_cells * batch)
    joint = torch.logsumexp(sum(per_block), 1)
    marginals = sum(torch.logsumexp(block, 1) for block in per_block)
    return joint - marginals + (len(per_block) - 1) * log_normaliser


def conditional_hsic(x: torch.Tensor, y: torch.Tensor, groups: torch.Tensor,
                     bandwidth: float | None = None, n_groups: int | None = None
                     ) -> torch.Tensor:
    """Normalised HSIC (:func:`~pyro_causalcell.kernels.normalized_hsic`) of ``x`` and ``y``
    within each group, averaged with the groups' sizes as weights; all groups at once.

    Parameters
    ----------
    x : (n, d) tensor
        E.g. a latent block; Gaussian kernel of bandwidth ``bandwidth`` (default
        :math:`\\sqrt d`).
    y : (n, k) tensor
        E.g. one-hot domains (linear kernel :math:`y y^\\top`, a delta kernel for one-hot rows).
    groups : (n,) long tensor
        The conditioning covariate's categories.
    bandwidth : float, optional
    n_groups : int, optional
        The number of possible ``groups`` codes, when known: no host read (see
        :func:`~pyro_causalcell.kernels.grouped_hsic`).

    Returns
    -------
    scalar tensor
    """
    bandwidth = math.sqrt(x.shape[-1]) if bandwidth is None else bandwidth
    kernel_x, kernel_y = gaussian_kernel(x, bandwidth), y @ y.T
    both, sizes = grouped_hsic(kernel_x, kernel_y, groups, n_groups)
    normaliser = torch.sqrt(grouped_hsic(kernel_x, kernel_x, groups, n_groups)[0]
                            * grouped_hsic(kernel_y, kernel_y, groups, n_groups)[0] + 1e-8)
    return (sizes * both / normaliser).sum() / x.shape[0]
