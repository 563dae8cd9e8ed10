r"""Permutation discriminators: a learned test of conditional independence between two blocks.

Two latent blocks :math:`a` and :math:`b` are independent given a group :math:`g` (a
(covariate, treatment) pair) exactly when permuting :math:`b` among the cells of each group leaves
the joint law of :math:`(a, b, g)` unchanged. A discriminator :math:`D(a, b, g)` is trained to
tell real triples from triples with :math:`b` permuted within groups (its own loss and optimiser:
an :class:`~pyro_causalcell.infer.steps.Adversary`); the encoders are penalised to fool it (the
non-saturating form: the discriminator's loss with the labels swapped), which pushes their
latents towards the conditional independence (FCR, Mao et al., 2024).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from ..nn import MLP

__all__ = ["within_group_permutation", "PermutationDiscriminator"]


def within_group_permutation(groups: torch.Tensor,
                             generator: torch.Generator | None = None,
                             n_groups: int | None = None) -> torch.Tensor:
    """A random permutation of the cells that maps every cell to another of its group.

    Cells are put in random order within their group and each takes its successor's place
    (a random cycle per group), so no cell of a group of two or more keeps its own value.

    Parameters
    ----------
    groups : (batch,) long tensor
        Group index of each cell.
    generator : torch.Generator, optional
    n_groups : int, optional
        The number of possible group codes (``groups < n_groups``): then nothing is read on the
        host. The permutation is the same either way.

    Returns
    -------
    (batch,) long tensor
        ``index`` such that ``b[index]`` is ``b`` permuted within groups; a cell alone in its
        group maps to itself (``index[i] == i``).
    """
    n = len(groups)
    noise = torch.rand(n, generator=generator, dtype=torch.float64).to(groups.device)
    order = torch.argsort(groups.to(torch.float64) + 0.5 * noise)
    if n_groups is None:
        groups = torch.unique(groups, return_inverse=True)[1]
        n_groups = int(groups.max()) + 1 if n else 1
    sizes = F.one_hot(groups, n_groups).sum(0)            # (n_groups,)
    sorted_groups = groups[order]
    starts = (torch.cumsum(sizes, 0) - sizes)[sorted_groups]
    lengths = sizes[sorted_groups]
    successor = starts + (torch.arange(n, device=groups.device) - starts + 1) % lengths
    index = torch.empty_like(order)
    index[order] = order[successor]
    return index


class PermutationDiscriminator(nn.Module):
    """:math:`D(a, b, g)`: logit that ``(a, b)`` is a real pair of group features ``g``
    rather than one with ``b`` permuted within the group.

    Parameters
    ----------
    n_a, n_b, n_group_features : int
        Widths of the two blocks and of the group features.
    hidden : sequence of int
    """

    def __init__(self, n_a: int, n_b: int, n_group_features: int,
                 hidden: Sequence[int] = (64, 64)):
        super().__init__()
        self.net = MLP(n_a + n_b + n_group_features, 1, hidden)

    def forward(self, a: torch.Tensor, b: torch.Tensor, group_features: torch.Tensor
                ) -> torch.Tensor:
        """``(batch,)`` logits."""
        return self.net(torch.cat([a, b, group_features], -1)).squeeze(-1)

    def loss(self, a: torch.Tensor, b: torch.Tensor, group_features: torch.Tensor,
             index: torch.Tensor, *, fool: bool = False) -> torch.Tensor:
        """Mean binary cross-entropy over the cells that have a partner in their group.

        Parameters
        ----------
        a : (batch, n_a) tensor
        b : (batch, n_b) tensor
        group_features : (batch, n_group_features) tensor
        index : (batch,) long tensor
            From :func:`within_group_permutation`.
        fool : bool
            The encoders' loss: real pairs labelled permuted and permuted pairs real.

        Returns
        -------
        scalar tensor
            0 when no cell has a partner.
        """
        # every cell is scored, those without a partner with weight 0: no boolean masks, so
        # nothing is read on the host
        paired = (index != torch.arange(len(index), device=index.device)).to(a.dtype)
        real = self(a, b, group_features)
        permuted = self(a, b[index], group_features)
        real_label, permuted_label = (0.0, 1.0) if fool else (1.0, 0.0)
        per_cell = (F.binary_cross_entropy_with_logits(real, torch.full_like(real, real_label),
                                                       reduction="none")
                    + F.binary_cross_entropy_with_logits(
                        permuted, torch.full_like(permuted, permuted_label), reduction="none"))
        return 0.5 * (per_cell * paired).sum() / paired.sum().clamp(min=1.0)
