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
from pyro.distributions import TorchDistribution, constraints
from torch.distributions.utils import lazy_property


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


def _subsets(n_active: int, like: torch.Tensor, empty: bool = False) -> torch.Tensor:
    """0/1 rows, one per subset of ``M`` perturbations in binary order: ``(2^M, M)`` with the
    empty subset first, or ``(2^M - 1, M)`` without it."""
    rows = list(itertools.product((0.0, 1.0), repeat=n_active))
    return torch.tensor(rows if empty else rows[1:], dtype=like.dtype, device=like.device)


def _log_density(z: torch.Tensor, cell_shift: torch.Tensor, cell_logit: torch.Tensor,
                 active: torch.Tensor) -> torch.Tensor:
    r"""The mixture's log density from per-cell tables (see :func:`shift_mixture_log_prob`).

    Parameters
    ----------
    z : (..., cells, K) tensor
    cell_shift, cell_logit : (..., cells, M, K) tensors
        :math:`\delta` and the logit of :math:`\pi` of each cell's ``M`` perturbation slots;
        the values of padding slots do not matter.
    active : (cells, M) tensor
        1 for a cell's perturbations, 0 for padding.
    """
    padding = active.unsqueeze(-1) < 0.5  # (cells, M, 1)
    normaliser = F.softplus(cell_logit).masked_fill(padding, 0.0).sum(-2)
    cell_shift = cell_shift.masked_fill(padding, 0.0)
    if cell_shift.shape[-2] == 1:  # one perturbation per cell: no sum over subsets
        loc = cell_shift.squeeze(-2)
        logit = cell_logit.masked_fill(padding, -math.inf).squeeze(-2)
        mixture = F.softplus(logit + loc * (z - 0.5 * loc))
    else:
        subsets = _subsets(cell_shift.shape[-2], cell_shift)  # (C, M)
        impossible = (1 - active.to(subsets.dtype)) @ subsets.t() > 0  # (cells, C)
        loc = torch.einsum("...nmk,cm->...nkc", cell_shift, subsets)
        subset_logit = torch.einsum("...nmk,cm->...nkc", cell_logit.masked_fill(padding, 0.0),
                                    subsets).masked_fill(impossible.unsqueeze(-2), -math.inf)
        terms = subset_logit + loc * (z.unsqueeze(-1) - 0.5 * loc)  # (..., cells, K, C)
        mixture = torch.logsumexp(F.pad(terms, (1, 0)), -1)  # the empty subset's term is 0
    return mixture - normaliser - 0.5 * z ** 2 - 0.5 * math.log(2 * math.pi)


class ShiftMixture(TorchDistribution):
    """Per-coordinate law of the latents of perturbed cells (see the module's docstring).

    Built by :func:`shift_mixture`. :meth:`log_prob` sums the indicators out in closed form
    (for a cell with one perturbation, one softplus per coordinate), which is what a training
    step needs; :attr:`mixture_distribution` and :attr:`component_distribution` give the same law
    as a ``MixtureSameFamily`` of :math:`2^M` Normals (built when first read), for sampling and
    for the counterfactual engine's abduction of a component.

    Parameters
    ----------
    cell_shift, cell_probability : (cells, M, K) tensors
        :math:`\\delta` and :math:`\\pi` of each cell's ``M`` perturbation slots.
    active : (cells, M) tensor
        1 for a cell's perturbations, 0 for padding.
    """

    arg_constraints = {}
    support = constraints.real
    has_rsample = False

    def __init__(self, cell_shift: torch.Tensor, cell_probability: torch.Tensor,
                 active: torch.Tensor, validate_args=None):
        self.cell_shift, self.cell_probability, self.active = cell_shift, cell_probability, active
        batch_shape = cell_shift.shape[:-2] + cell_shift.shape[-1:]
        super().__init__(batch_shape, torch.Size(), validate_args=validate_args)

    @lazy_property
    def _cell_logit(self) -> torch.Tensor:
        probability = self.cell_probability
        return probability.clamp_min(1e-30).log() - torch.log1p(-probability.clamp_max(1 - 1e-7))

    @lazy_property
    def _active_probability(self) -> torch.Tensor:
        """:math:`\\pi` of each slot, 0 for padding: ``(..., cells, M, K)``."""
        return self.cell_probability * self.active.unsqueeze(-1)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return _log_density(value, self.cell_shift, self._cell_logit, self.active)

    @lazy_property
    def component_distribution(self) -> dist.Normal:
        """``Normal`` with batch shape ``(cells, K, 2^M)``: one component per subset of the
        cell's perturbations (subset ``c`` in binary order, the empty one first)."""
        subsets = _subsets(self.active.shape[-1], self.cell_shift, empty=True)
        loc = torch.einsum("...nmk,cm->...nkc", self.cell_shift, subsets)
        return dist.Normal(loc, torch.ones_like(loc))

    @lazy_property
    def mixture_distribution(self) -> dist.Categorical:
        """``Categorical`` over the subsets, batch shape ``(cells, K)``."""
        subsets = _subsets(self.active.shape[-1], self.cell_shift, empty=True)
        probability = self._active_probability
        on = probability.clamp_min(1e-30).log().unsqueeze(-1)  # (..., cells, M, K, 1)
        off = torch.log1p(-probability.clamp_max(1 - 1e-7)).unsqueeze(-1)
        chosen = subsets.t().reshape(subsets.shape[1], 1, subsets.shape[0])  # (M, 1, C)
        return dist.Categorical(logits=torch.where(chosen > 0.5, on, off).sum(-3))

    def as_mixture(self) -> dist.MixtureSameFamily:
        """The same law as a ``MixtureSameFamily`` of Normals."""
        return dist.MixtureSameFamily(self.mixture_distribution, self.component_distribution)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        return self.as_mixture().sample(sample_shape)

    @property
    def mean(self) -> torch.Tensor:
        return (self._active_probability * self.cell_shift).sum(-2)

    @property
    def variance(self) -> torch.Tensor:
        probability = self._active_probability
        return 1.0 + (probability * (1 - probability) * self.cell_shift ** 2).sum(-2)

    def expand(self, batch_shape, _instance=None) -> "ShiftMixture":
        batch_shape = torch.Size(batch_shape)
        tables = batch_shape[:-1] + self.active.shape[-1:] + batch_shape[-1:]
        return ShiftMixture(self.cell_shift.expand(tables), self.cell_probability.expand(tables),
                            self.active.expand(batch_shape[:-1] + self.active.shape[-1:]))


def shift_mixture(perturbation: torch.Tensor, shift: torch.Tensor,
                  probability: torch.Tensor, n_max: int | None = None) -> ShiftMixture:
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
    ShiftMixture with batch shape ``(cells, K)``
        Control cells (no perturbation) follow ``Normal(0, 1)``.
    """
    index, active = active_perturbations(perturbation, n_max)  # (cells, M)
    active = active.to(shift.dtype)
    return ShiftMixture(shift[index], probability[index], active)


def shift_mixture_log_prob(z: torch.Tensor, perturbation: torch.Tensor, shift: torch.Tensor,
                           target_logit: torch.Tensor) -> torch.Tensor:
    """Log density of :func:`shift_mixture` at ``z``, computed from the logits of :math:`\\pi`
    and vectorised over leading batch dimensions of the tables (e.g. the starts of a search).

    Per coordinate, :math:`\\log p(z) = \\log \\mathcal{N}(z; 0, 1)
    - \\sum_{p \\in A} \\mathrm{softplus}(\\ell_p)
    + \\log \\sum_{S \\subseteq A} \\exp\\big(\\sum_{p \\in S} \\ell_p + d_S (z - d_S / 2)\\big)`
    with :math:`d_S = \\sum_{p \\in S} \\delta_p`; for a single perturbation the sum is one
    softplus.

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
    cell_shift, cell_logit = (  # (..., cells, M, K); padding is masked in _log_density
        table.index_select(-2, index.flatten()).unflatten(-2, index.shape)
        for table in (shift, target_logit))
    return _log_density(z, cell_shift, cell_logit, active)
