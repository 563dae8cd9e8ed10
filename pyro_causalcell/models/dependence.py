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

**HSIC** (Gretton et al., 2005) of paired samples with kernel matrices :math:`K, L` and centring
:math:`H`: :math:`\widehat{\mathrm{HSIC}} = \operatorname{tr}(K H L H) / n^2`, zero in the
population iff the two are independent (characteristic kernels). :func:`conditional_hsic`
averages it within the groups of a conditioning covariate, an estimate of dependence *given*
that covariate: inVAE penalises the invariant block's dependence on the technical domain given
the biology, which is what conditional invariance asks (:math:`z_{inv} \perp d \mid y`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

__all__ = ["block_total_correlation", "gaussian_kernel", "hsic", "normalized_hsic",
           "conditional_hsic"]


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


def gaussian_kernel(x: torch.Tensor, bandwidth: float | None = None) -> torch.Tensor:
    r"""``(n, d)`` -> ``(n, n)`` :math:`\exp(-\lVert x_i - x_j\rVert^2 / 2\sigma^2)`;
    default :math:`\sigma^2 = d` (the squared distance of two standard normal points is about
    :math:`2d`)."""
    bandwidth_sq = float(x.shape[-1]) if bandwidth is None else bandwidth ** 2
    return torch.exp(-torch.cdist(x, x).square() / (2.0 * bandwidth_sq))


def hsic(kernel_x: torch.Tensor, kernel_y: torch.Tensor) -> torch.Tensor:
    r"""Biased HSIC estimate :math:`\operatorname{tr}(K H L H) / n^2` of two ``(n, n)`` kernel
    matrices (differentiable); 0 for ``n < 2``."""
    n = kernel_x.shape[0]
    if n < 2:
        return kernel_x.new_zeros(())
    centred_x = kernel_x - kernel_x.mean(0, keepdim=True)
    centred_y = kernel_y - kernel_y.mean(0, keepdim=True)
    return (centred_x * centred_y.T).sum() / n ** 2


def normalized_hsic(kernel_x: torch.Tensor, kernel_y: torch.Tensor,
                    eps: float = 1e-8) -> torch.Tensor:
    r""":math:`\mathrm{HSIC}(K, L) / \sqrt{\mathrm{HSIC}(K, K)\,\mathrm{HSIC}(L, L)}` in
    [0, 1] (centred kernel alignment): unchanged by rescaling either kernel, so a penalty
    weight means the same whatever the group's balance; 0 when either side is constant."""
    return hsic(kernel_x, kernel_y) / torch.sqrt(
        hsic(kernel_x, kernel_x) * hsic(kernel_y, kernel_y) + eps)


def conditional_hsic(x: torch.Tensor, y: torch.Tensor, groups: torch.Tensor,
                     bandwidth: float | None = None) -> torch.Tensor:
    """Normalised HSIC (:func:`normalized_hsic`) of ``x`` and ``y`` within each group, averaged
    with the groups' sizes as weights; all groups at once (no loop over groups).

    Parameters
    ----------
    x : (n, d) tensor
        E.g. a latent block (Gaussian kernel, :func:`gaussian_kernel`).
    y : (n, k) tensor
        E.g. one-hot domains (linear kernel :math:`y y^\\top`, a delta kernel for one-hot rows).
    groups : (n,) long tensor
        The conditioning covariate's categories.

    Returns
    -------
    scalar tensor
    """
    kernel_x, kernel_y = gaussian_kernel(x, bandwidth), y @ y.T
    members = F.one_hot(torch.unique(groups, return_inverse=True)[1]).to(x.dtype)  # (n, G)
    sizes = members.sum(0)
    both = _grouped_hsic(kernel_x, kernel_y, members, sizes)
    normaliser = torch.sqrt(_grouped_hsic(kernel_x, kernel_x, members, sizes)
                            * _grouped_hsic(kernel_y, kernel_y, members, sizes) + 1e-8)
    return (sizes * both / normaliser).sum() / x.shape[0]


def _grouped_hsic(kernel_a: torch.Tensor, kernel_b: torch.Tensor, members: torch.Tensor,
                  sizes: torch.Tensor) -> torch.Tensor:
    """``(G,)`` :func:`hsic` of the kernels restricted to each group's rows and columns:
    each kernel centred within the groups (:math:`H_g K H_g` on each diagonal block, zero off
    them), then :math:`\\sum_{i,j \\in g} \\tilde K_{ij} \\tilde L_{ij} / n_g^2`. Centring
    by subtraction keeps a constant kernel exactly zero."""
    same_group = members @ members.T
    size_of = members @ sizes  # each cell's group size

    def centred_within(kernel):
        rows = ((kernel @ members) * members).sum(1) / size_of
        block_means = ((members.T @ kernel) * members.T).sum(1) / sizes.clamp(min=1) ** 2
        return (kernel - rows[:, None] - rows[None, :] + (members @ block_means)[:, None]) \
            * same_group

    products = (centred_within(kernel_a) * centred_within(kernel_b)).sum(1)
    value = (members.T @ products) / sizes.clamp(min=1) ** 2
    return torch.where(sizes >= 2, value, torch.zeros_like(value))
