r"""Latent blocks: the pieces a family's model is composed of (cevae style).

A block is one per-cell latent site ``"z_<name>"`` with its **prior** (a small module that
returns :math:`p(z \mid u)` for covariate features :math:`u`) and its **encoder** (the guide's
:math:`q(z \mid x, c)`). A model with blocks ``z_inv`` and ``z_spur`` (inVAE) or ``z_x``,
``z_t``, ``z_tx`` (FCR) samples each block in the cells plate and decodes their concatenation;
a new prior is a new small class, not a rewritten ``model``. See the guide "Writing a model".
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from .. import sites
from ..data import CellBatch
from ..nn import MLP, GaussianEncoder

__all__ = ["NormalPrior", "ConditionalNormalPrior", "InteractionPrior", "LatentBlock"]

PRIOR_MODES = ("variance", "mean", "both")


class NormalPrior(nn.Module):
    """:math:`p(z) = \\mathcal{N}(0, I)`: a block no covariate informs."""

    def __init__(self, n_latent: int):
        super().__init__()
        self.n_latent = n_latent

    def forward(self, covariates: torch.Tensor | None, n_cells: int,
                like: torch.Tensor) -> dist.Distribution:
        """The prior of ``n_cells`` cells, batch shape ``(n_cells,)``, event ``(n_latent,)``."""
        zeros = like.new_zeros(n_cells, self.n_latent)
        return dist.Normal(zeros, 1.0).to_event(1)


class ConditionalNormalPrior(nn.Module):
    r""":math:`p(z \mid u) = \mathcal{N}(\mu(u), \operatorname{diag}\sigma^2(u))`.

    Parameters
    ----------
    n_covariates : int
        Width of the feature vector :math:`u` (e.g. one-hot labels).
    n_latent : int
    hidden : sequence of int
        Hidden layers of the network of :math:`u` (empty: a linear map, as an embedding).
    mode : {"variance", "mean", "both"}
        What the covariates set: the variance (mean 0; iVAE-style, inVAE's default), the mean
        (unit variance), or both.
    """

    def __init__(self, n_covariates: int, n_latent: int, hidden: Sequence[int] = (),
                 mode: str = "variance"):
        super().__init__()
        if mode not in PRIOR_MODES:
            raise ValueError(f"mode={mode!r}; choose one of {PRIOR_MODES}")
        if n_covariates < 1:
            raise ValueError("a conditional prior needs covariates (n_covariates >= 1); use "
                             "NormalPrior for a block no covariate informs")
        self.mode, self.n_latent = mode, n_latent
        self.net = MLP(n_covariates, 2 * n_latent, hidden)

    def forward(self, covariates: torch.Tensor, n_cells: int,
                like: torch.Tensor) -> dist.Distribution:
        loc, raw_scale = self.net(covariates).split(self.n_latent, -1)
        if self.mode == "variance":
            loc = torch.zeros_like(loc)
        scale = F.softplus(raw_scale) + 1e-4 if self.mode != "mean" else torch.ones_like(loc)
        return dist.Normal(loc, scale).to_event(1)


class InteractionPrior(nn.Module):
    r""":math:`p(z \mid x, t) = \mathcal{N}(b + A h, I)` with
    :math:`h = \sum_k t_k\,(e_x(x) - \bar e_{x,k}) \odot v_k`: the elementwise product of a
    covariate embedding :math:`e_x` and each treatment's embedding :math:`v_k`, so a pair never
    seen together still has a prior built from what each member did with others.

    :math:`\bar e_{x,k}` is the mean covariate embedding of the cells that received treatment
    :math:`k` (a running average over training minibatches, like batch norm's statistics, kept
    in the buffer ``covariate_means``). So the interaction averages to zero over the contexts
    a treatment was given in (the treatment's common effect is left to its own block, an
    ANOVA-style constraint), and :math:`t = 0` gives every control cell the same prior.
    :meth:`interaction` (:math:`A h`) is what a model may shrink towards zero, and
    :meth:`embedding_spread` what keeps a covariate never given a treatment (whose embedding
    no treated cell informs) at the centre of the others, so its interaction with that
    treatment is predicted near zero rather than from an arbitrary embedding.

    Parameters
    ----------
    n_covariates, n_treatments : int
        Widths of the covariate features :math:`x` and treatment features :math:`t`; the
        ``covariates`` passed to :meth:`forward` are ``[x, t]``.
    n_latent : int
    n_embedding : int
        Width of the embeddings.
    momentum : float
        Weight of each training minibatch in the running covariate means.
    """

    def __init__(self, n_covariates: int, n_treatments: int, n_latent: int,
                 n_embedding: int = 32, momentum: float = 0.1):
        super().__init__()
        self.n_covariates, self.n_latent, self.momentum = n_covariates, n_latent, momentum
        self.covariate_embedding = nn.Linear(n_covariates, n_embedding, bias=False)
        nn.init.normal_(self.covariate_embedding.weight, std=0.1)
        self.treatment_embedding = nn.Linear(n_treatments, n_embedding, bias=False)
        self.loc = nn.Linear(n_embedding, n_latent, bias=False)
        self.control_loc = nn.Parameter(torch.zeros(n_latent))
        self.register_buffer("covariate_means",
                             torch.full((n_treatments, n_covariates), 1.0 / n_covariates))

    def _embedded(self, covariates: torch.Tensor, update: bool = False) -> torch.Tensor:
        x, t = covariates.split([self.n_covariates, covariates.shape[-1] - self.n_covariates],
                                -1)
        if update:
            self._update_means(x.detach(), t.detach())
        # (n_treatments, n_embedding); a copy, so a later update leaves this graph alone
        centres = self.covariate_embedding(self.covariate_means.clone())
        treatment = self.treatment_embedding.weight.T             # (n_treatments, n_embedding)
        return (self.covariate_embedding(x) * self.treatment_embedding(t)
                - t @ (centres * treatment))

    def _update_means(self, x: torch.Tensor, t: torch.Tensor) -> None:
        """Move each treatment's covariate mean towards this minibatch's (treated cells only)."""
        weights = t.abs()                                           # (batch, n_treatments)
        totals = weights.sum(0)
        given = totals > 0  # treatments absent from the batch keep their means
        batch_means = (weights.T @ x) / totals.clamp(min=1e-12).unsqueeze(-1)
        updated = torch.lerp(self.covariate_means, batch_means, self.momentum)
        self.covariate_means.copy_(torch.where(given.unsqueeze(-1), updated,
                                               self.covariate_means))

    def embedding_spread(self) -> torch.Tensor:
        """Scalar: the squared distance of each covariate feature's embedding from their mean,
        summed (a Gaussian prior on the embeddings, centred on their mean)."""
        table = self.covariate_embedding.weight                   # (n_embedding, n_covariates)
        return (table - table.mean(-1, keepdim=True)).pow(2).sum()

    def interaction(self, covariates: torch.Tensor) -> torch.Tensor:
        """``(batch, n_latent)`` :math:`A h`: the prior mean minus the controls'."""
        return self.loc(self._embedded(covariates))

    def forward(self, covariates: torch.Tensor, n_cells: int,
                like: torch.Tensor) -> dist.Distribution:
        loc = self.control_loc + self.loc(self._embedded(covariates, update=self.training))
        return dist.Normal(loc, torch.ones_like(loc)).to_event(1)


class LatentBlock(nn.Module):
    """One per-cell latent block: site ``"z_<name>"``, its prior and its encoder.

    Parameters
    ----------
    name : str
        The block's name; its site is ``sites.latent_site(name)`` (``"z_inv"`` for ``"inv"``)
        unless ``site`` is given.
    n_genes, n_latent : int
    prior : nn.Module
        ``prior(covariates, n_cells, like) -> Distribution`` (:class:`NormalPrior`,
        :class:`ConditionalNormalPrior` or your own).
    n_encoder_covariates : int
        Width of the features the encoder sees besides the counts.
    hidden : sequence of int
    dropout, norm
        As in :class:`~pyro_causalcell.nn.GaussianEncoder`.
    site : str, optional
        The site name (a single-block model's ``"z"``).
    """

    def __init__(self, name: str, n_genes: int, n_latent: int, prior: nn.Module, *,
                 n_encoder_covariates: int = 0, hidden: Sequence[int] = (128,),
                 dropout: float = 0.0, norm: str | None = None, site: str | None = None):
        super().__init__()
        self.name, self.n_latent = name, n_latent
        self.site = sites.latent_site(name) if site is None else site
        self.prior = prior
        self.encoder = GaussianEncoder(n_genes, n_latent, hidden,
                                       n_covariates=n_encoder_covariates, dropout=dropout,
                                       norm=norm)

    def model(self, batch: CellBatch, covariates: torch.Tensor | None = None) -> torch.Tensor:
        """Sample the block from its prior (call inside the cells plate)."""
        prior = self.prior(covariates, len(batch), batch.library)
        return pyro.sample(self.site, prior)

    def guide(self, batch: CellBatch, covariates: torch.Tensor | None = None) -> torch.Tensor:
        """Sample the block from the encoder (call inside the cells plate)."""
        loc, scale = self.encoder(batch.counts, covariates)
        return pyro.sample(self.site, dist.Normal(loc, scale).to_event(1))
