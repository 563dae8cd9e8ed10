r"""Latents of perturbed cells with per-cell target masks summed out exactly.

A cell with perturbations :math:`A \subseteq \{1..P\}` draws, for every latent :math:`k` and
every :math:`p \in A`, a target indicator :math:`m_{pk} \sim \mathrm{Bernoulli}(\pi_{pk})`, and
then :math:`z_k \sim \mathcal{N}(\sum_{p \in A} m_{pk}\,\delta_{pk}, 1)`. Summing the
indicators out gives, per coordinate, a mixture of :math:`2^{|A|}` unit-variance Normals:

.. math::
    p(z_k) = \sum_{S \subseteq A} \prod_{p \in S} \pi_{pk} \prod_{p \in A \setminus S}
    (1 - \pi_{pk})\; \mathcal{N}\big(z_k;\ \textstyle\sum_{p \in S} \delta_{pk},\ 1\big).

No indicator is sampled, so gradients reach :math:`\pi` and :math:`\delta` without relaxations.
"""

from __future__ import annotations

import itertools
import math

import pyro.distributions as dist
import torch
import torch.nn.functional as F


def active_perturbations(perturbation: torch.Tensor, n_max: int | None = None
                         ) -> tuple[torch.Tensor, torch.Tensor]:
    """Indices of each cell's perturbations, padded to the largest count in the batch.

    Parameters
    ----------
    perturbation : (cells, P) multi-hot tensor
    n_max : int, optional
        A known bound on the perturbations per cell (e.g. the training data's), so the batch's
        own largest count need not be read on the host; more than needed only pads.

    Returns
    -------
    index : (cells, M) long tensor
    active : (cells, M) float tensor
        1 where ``index`` names one of the cell's perturbations, 0 for padding.
    """
    if n_max is None:
        n_max = int(perturbation.sum(-1).max().item()) if perturbation.numel() else 1
    n_max = min(max(n_max, 1), perturbation.shape[-1])
    active, index = perturbation.topk(n_max, dim=-1)
    return index, (active > 0.5).to(perturbation.dtype)


def shift_mixture(perturbation: torch.Tensor, shift: torch.Tensor,
                  probability: torch.Tensor, n_max: int | None = None
                  ) -> dist.MixtureSameFamily:
    """Per-coordinate mixture law of the latents of perturbed cells.

    Parameters
    ----------
    perturbation : (cells, P) multi-hot tensor
    shift : (P, K) tensor
        :math:`\\delta`.
    probability : (P, K) tensor in [0, 1]
        :math:`\\pi`: probability that a perturbation targets a latent in a cell.
    n_max : int, optional
        Bound on the perturbations per cell (see :func:`active_perturbations`).

    Returns
    -------
    MixtureSameFamily with batch shape ``(cells, K)``
        Control cells (no perturbation) get the single component ``Normal(0, 1)``.
    """
    index, active = active_perturbations(perturbation, n_max)  # (cells, M)
    cell_shift = shift[index]  # (cells, M, K)
    cell_probability = probability[index] * active.unsqueeze(-1)
    subsets = torch.tensor(list(itertools.product((0.0, 1.0), repeat=index.shape[-1])),
                           dtype=shift.dtype, device=shift.device)  # (C, M)
    loc = torch.einsum("nmk,cm->nkc", cell_shift, subsets)
    on = cell_probability.clamp_min(1e-30).log().unsqueeze(-1)  # (cells, M, K, 1)
    off = torch.log1p(-cell_probability.clamp_max(1 - 1e-7)).unsqueeze(-1)
    chosen = subsets.t().reshape(1, subsets.shape[1], 1, subsets.shape[0])  # (1, M, 1, C)
    logits = torch.where(chosen > 0.5, on, off).sum(1)  # (cells, K, C)
    return dist.MixtureSameFamily(dist.Categorical(logits=logits),
                                  dist.Normal(loc, torch.ones_like(loc)))


def shift_mixture_log_prob(z: torch.Tensor, perturbation: torch.Tensor, shift: torch.Tensor,
                           target_logit: torch.Tensor) -> torch.Tensor:
    """Log density of :func:`shift_mixture` at ``z``, computed from the logits of :math:`\\pi`
    and vectorised over leading batch dimensions of the tables (e.g. the starts of a search).

    Per coordinate, :math:`\\log p(z) = \\log \\mathcal{N}(z; 0, 1)
    - \\sum_{p \\in A} \\mathrm{softplus}(\\ell_p)
    + \\log \\sum_{S \\subseteq A} \\exp\\big(\\sum_{p \\in S} \\ell_p + d_S (z - d_S / 2)\\big)`
    with :math:`d_S = \\sum_{p \\in S} \\delta_p`; for a single perturbation the sum is one
    softplus, so this costs a fraction of the general mixture's ``log_prob``.

    Parameters
    ----------
    z : (..., cells, K) tensor
    perturbation : (cells, P) multi-hot tensor
    shift, target_logit : (..., P, K) tensors
        :math:`\\delta` and the logit :math:`\\ell` of :math:`\\pi`.

    Returns
    -------
    (..., cells, K) tensor
    """
    index, active = active_perturbations(perturbation)  # (cells, M)
    active = active.to(shift.dtype)
    cell_shift, cell_logit = (  # (..., cells, M, K); padding is masked below
        table.index_select(-2, index.flatten()).unflatten(-2, index.shape)
        for table in (shift, target_logit))
    subsets = torch.tensor(list(itertools.product((0.0, 1.0), repeat=index.shape[-1]))[1:],
                           dtype=shift.dtype, device=shift.device)  # (C, M), non-empty
    impossible = (1 - active) @ subsets.t() > 0  # (cells, C): a subset naming padding
    loc = torch.einsum("...nmk,cm->...nkc", cell_shift * active.unsqueeze(-1), subsets)
    subset_logit = torch.einsum("...nmk,cm->...nkc", cell_logit, subsets).masked_fill(
        impossible.unsqueeze(-2), -math.inf)
    terms = subset_logit + loc * (z.unsqueeze(-1) - 0.5 * loc)  # (..., cells, K, C)
    if terms.shape[-1] == 1:
        mixture = F.softplus(terms.squeeze(-1))
    else:
        mixture = torch.logsumexp(F.pad(terms, (1, 0)), -1)  # the empty subset's term is 0
    normaliser = (F.softplus(cell_logit) * active.unsqueeze(-1)).sum(-2)
    return mixture - normaliser - 0.5 * z ** 2 - 0.5 * math.log(2 * math.pi)
