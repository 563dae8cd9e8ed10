r"""Kernel dependence measures in torch, once for the whole package: the differentiable
penalties of models (HSIC-VAE, inVAE's conditional invariance) and the permutation tests of
:mod:`pyro_causalcell.metrics.independence` compute HSIC with these functions.

The Hilbert-Schmidt independence criterion (Gretton et al., 2005) of paired samples with kernel
matrices :math:`K, L` and centring :math:`H = I - \tfrac1n \mathbf{1}\mathbf{1}^\top` is
estimated by the biased V-statistic :math:`\widehat{\mathrm{HSIC}} = \operatorname{tr}(K H L H)
/ n^2`, zero in the population iff the samples are independent (characteristic kernels such as
the Gaussian :math:`k(x, x') = \exp(-\lVert x - x'\rVert^2 / 2\sigma^2)`). Everything is held as
``(n, n)`` matrices: a minibatch or a subsample of a few thousand cells.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

__all__ = ["gaussian_kernel", "dimension_bandwidth", "centred", "hsic", "hsic_of_centred",
           "normalized_hsic", "grouped_hsic"]


def dimension_bandwidth(n_dims: int) -> float:
    r""":math:`\sigma = 2\Gamma(\tfrac{d+1}{2}) / \Gamma(\tfrac d2)`, the expected distance between
    two independent :math:`\mathcal{N}(0, I_d)` points: the bandwidth the HSIC-constrained VAE
    (Lopez et al., 2018) uses for a ``d``-dimensional variable (about :math:`\sqrt{2d}`)."""
    return 2.0 * math.exp(math.lgamma((n_dims + 1) / 2.0) - math.lgamma(n_dims / 2.0))


def gaussian_kernel(x: torch.Tensor, bandwidth: float) -> torch.Tensor:
    r"""``(n, d)`` -> ``(n, n)`` :math:`\exp(-\lVert x_i - x_j\rVert^2 / 2\sigma^2)`."""
    if not bandwidth > 0:
        raise ValueError(f"bandwidth must be > 0, got {bandwidth}")
    return torch.exp(-torch.cdist(x, x).square() / (2.0 * bandwidth ** 2))


def centred(kernel: torch.Tensor) -> torch.Tensor:
    """:math:`H K H`: rows and columns centred."""
    return (kernel - kernel.mean(0, keepdim=True) - kernel.mean(1, keepdim=True)
            + kernel.mean())


def hsic_of_centred(centred_x: torch.Tensor, kernel_y: torch.Tensor) -> torch.Tensor:
    """:math:`\\operatorname{tr}(HKH\\,L) / n^2` from an already centred :math:`HKH` (reused
    across the permutations of a test)."""
    return (centred_x * kernel_y).sum() / centred_x.shape[0] ** 2


def hsic(kernel_x: torch.Tensor, kernel_y: torch.Tensor) -> torch.Tensor:
    """Biased HSIC of two ``(n, n)`` kernel matrices (differentiable); 0 for ``n < 2``."""
    if kernel_x.shape[0] < 2:
        return kernel_x.new_zeros(())
    return hsic_of_centred(centred(kernel_x), kernel_y)


def normalized_hsic(kernel_x: torch.Tensor, kernel_y: torch.Tensor,
                    eps: float = 1e-8) -> torch.Tensor:
    r""":math:`\mathrm{HSIC}(K, L) / \sqrt{\mathrm{HSIC}(K, K)\,\mathrm{HSIC}(L, L)}` in
    [0, 1] (centred kernel alignment): unchanged by rescaling either kernel; 0 when either
    side is constant."""
    return hsic(kernel_x, kernel_y) / torch.sqrt(
        hsic(kernel_x, kernel_x) * hsic(kernel_y, kernel_y) + eps)


def grouped_hsic(kernel_a: torch.Tensor, kernel_b: torch.Tensor, groups: torch.Tensor,
                 n_groups: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    r"""HSIC of the kernels restricted to each group's rows and columns, all groups at once:
    each kernel centred within the groups (:math:`H_g K H_g` on each diagonal block, zero off
    them), then :math:`\sum_{i,j \in g} 	ilde K_{ij} 	ilde L_{ij} / n_g^2` (0 for groups of
    one). Centring by subtraction keeps a constant kernel exactly zero.

    Parameters
    ----------
    kernel_a, kernel_b : (n, n) tensor
    groups : (n,) long tensor
    n_groups : int, optional
        With it, ``groups`` are codes in ``[0, n_groups)`` and nothing is read on the host (a
        training step on a GPU); groups with no cell get HSIC 0 and size 0.

    Returns
    -------
    (G,) tensor, (G,) tensor
        Each group's HSIC and size, groups in the order of ``torch.unique(groups)`` (or of
        the codes ``0..n_groups-1``).
    """
    if n_groups is None:
        groups = torch.unique(groups, return_inverse=True)[1]
    members = F.one_hot(groups, -1 if n_groups is None else n_groups).to(kernel_a.dtype)
    sizes = members.sum(0)
    same_group = members @ members.T
    size_of = members @ sizes  # each cell's group size

    def centred_within(kernel):
        rows = ((kernel @ members) * members).sum(1) / size_of
        block_means = ((members.T @ kernel) * members.T).sum(1) / sizes.clamp(min=1) ** 2
        return (kernel - rows[:, None] - rows[None, :] + (members @ block_means)[:, None]) \
            * same_group

    products = (centred_within(kernel_a) * centred_within(kernel_b)).sum(1)
    value = (members.T @ products) / sizes.clamp(min=1) ** 2
    return torch.where(sizes >= 2, value, torch.zeros_like(value)), sizes
