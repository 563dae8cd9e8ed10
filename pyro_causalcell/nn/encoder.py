"""Encoder from counts to the location and scale of a diagonal Gaussian."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .mlp import MLP


class GaussianEncoder(nn.Module):
    """Amortised posterior ``q(z | x, c) = Normal(loc, scale)`` over ``n_latent`` dimensions.

    Counts enter as ``log1p(counts)``; an optional covariate vector is injected in every layer.

    Parameters
    ----------
    n_genes, n_latent : int
    hidden : sequence of int
    n_covariates : int
    dropout : float
    norm : {None, "layer", "batch"}
        Normalisation of hidden layers (see :class:`MLP`).
    min_scale : float
        Lower bound added to the softplus scale, for numerical safety.
    """

    def __init__(self, n_genes: int, n_latent: int, hidden: Sequence[int] = (128,), *,
                 n_covariates: int = 0, dropout: float = 0.0, norm: str | None = None,
                 min_scale: float = 1e-4):
        super().__init__()
        self.net = MLP(n_genes, 2 * n_latent, hidden, n_covariates=n_covariates,
                       dropout=dropout, norm=norm)
        self.n_latent = n_latent
        self.min_scale = min_scale

    def forward(self, counts: torch.Tensor, covariates: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(batch, n_genes)`` counts -> ``loc, scale``, each ``(batch, n_latent)``."""
        out = self.net(torch.log1p(counts), covariates)
        loc, raw_scale = out.split(self.n_latent, dim=-1)
        return loc, F.softplus(raw_scale) + self.min_scale

    @torch.no_grad()
    def transform_loc(self, matrix: torch.Tensor, offset: torch.Tensor) -> None:
        """Make the location ``matrix @ (loc - offset)`` by changing the last layer's rows.

        The scale's rows are left as they were: the scale is not transformed.

        Parameters
        ----------
        matrix : (n_latent, n_latent) tensor
        offset : (n_latent,) tensor
        """
        last, k = self.net.layers[-1], self.n_latent
        last.bias[:k] = matrix @ (last.bias[:k] - offset)
        last.weight[:k] = matrix @ last.weight[:k]
