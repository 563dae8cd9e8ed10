"""Count decoder: latents -> gene proportions (softmax) x observed library size -> likelihood
(or, with ``likelihood="gaussian"``, latents -> mean log-normalised expression)."""

from __future__ import annotations

from collections.abc import Sequence

import pyro.distributions as dist
import torch
from torch import nn

from ..distributions import NegativeBinomial, ZeroInflatedNegativeBinomial
from .mlp import MLP

LIKELIHOODS = ("nb", "zinb", "poisson", "gaussian")
#: counts per cell of the log-normalised scale the Gaussian likelihood models
SCALE = 1e4
DISPERSIONS = ("gene", "gene-domain")


class CountDecoder(nn.Module):
    """Expected counts ``library * softmax(f(z, c))`` and a count likelihood around them.

    Parameters
    ----------
    n_latent, n_genes : int
    hidden : sequence of int
    n_covariates : int
        Width of the covariate vector (e.g. one-hot domain) injected in every layer.
    likelihood : {"nb", "zinb", "poisson", "gaussian"}
        Count likelihoods at the observed library size, or ``"gaussian"``: a Normal with one
        scale per gene on log-normalised expression, ``log1p(counts / total * 1e4)`` (FCR's
        and CPA's choice; see :meth:`observation`).
    dispersion : {"gene", "gene-domain"}
        One inverse dispersion (Gaussian: log scale) per gene, or per gene and domain.
    n_domains : int
        Number of domains (needed for ``dispersion="gene-domain"``).
    dropout : float
    norm : {None, "layer", "batch"}
        Normalisation of hidden layers (see :class:`MLP`).
    """

    def __init__(self, n_latent: int, n_genes: int, hidden: Sequence[int] = (128,), *,
                 n_covariates: int = 0, likelihood: str = "nb", dispersion: str = "gene",
                 n_domains: int = 0, dropout: float = 0.0, norm: str | None = None):
        super().__init__()
        if likelihood not in LIKELIHOODS:
            raise ValueError(f"likelihood={likelihood!r}; choose one of {LIKELIHOODS}")
        if dispersion not in DISPERSIONS:
            raise ValueError(f"dispersion={dispersion!r}; choose one of {DISPERSIONS}")
        if dispersion == "gene-domain" and n_domains < 1:
            raise ValueError("dispersion='gene-domain' needs data with domains (domain_key=...)")
        self.likelihood = likelihood
        self.dispersion = dispersion
        n_out = 2 * n_genes if likelihood == "zinb" else n_genes
        self.net = MLP(n_latent, n_out, hidden, n_covariates=n_covariates, dropout=dropout,
                       norm=norm)
        self.n_genes = n_genes
        rows = n_domains if dispersion == "gene-domain" else 1
        self.log_inverse_dispersion = nn.Parameter(torch.zeros(rows, n_genes))

    def forward(self, z: torch.Tensor, library: torch.Tensor,
                covariates: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
        """Decode latents.

        Parameters
        ----------
        z : (batch, n_latent) tensor
        library : (batch,) tensor
        covariates : (batch, n_covariates) tensor, optional

        Returns
        -------
        dict with ``log_mean`` and ``mean`` (``(batch, n_genes)`` expected counts) and, for
        ZINB, ``gate_logits``; for ``"gaussian"``, ``mean`` only, the expected log-normalised
        expression.
        """
        out = self.net(z, covariates)
        if self.likelihood == "gaussian":
            return {"mean": out}
        if self.likelihood == "zinb":
            out, gate_logits = out.split(self.n_genes, dim=-1)
        log_mean = torch.log_softmax(out, dim=-1) + library.log().unsqueeze(-1)
        decoded = {"log_mean": log_mean, "mean": log_mean.exp()}
        if self.likelihood == "zinb":
            decoded["gate_logits"] = gate_logits
        return decoded

    @torch.no_grad()
    def transform_input(self, matrix: torch.Tensor, offset: torch.Tensor) -> None:
        """Take latents ``z' = matrix @ (z - offset)`` and decode them exactly as ``z`` was
        decoded, by changing the first layer's latent columns (covariates are unchanged).

        Parameters
        ----------
        matrix : (n_latent, n_latent) invertible tensor
        offset : (n_latent,) tensor
        """
        first, k = self.net.layers[0], matrix.shape[0]
        first.bias += first.weight[:, :k] @ offset
        first.weight[:, :k] = first.weight[:, :k] @ torch.linalg.inv(matrix)

    def observation(self, counts: torch.Tensor | None) -> torch.Tensor | None:
        """What the likelihood scores: the ``(batch, n_genes)`` counts themselves, or for
        ``"gaussian"`` the log-normalised ``log1p(counts / total counts * 1e4)``
        (``None`` when there are no counts to score, as in prediction)."""
        if counts is None or self.likelihood != "gaussian":
            return counts
        total = counts.sum(-1, keepdim=True).clamp(min=1.0)
        return torch.log1p(counts / total * SCALE)

    def inverse_dispersion(self, domain: torch.Tensor | None = None) -> torch.Tensor:
        """``(n_genes,)`` or, per domain, ``(batch, n_genes)`` inverse dispersion."""
        theta = self.log_inverse_dispersion.exp()
        if self.dispersion == "gene-domain":
            return theta.index_select(0, domain)
        return theta[0]

    def distribution(self, decoded: dict[str, torch.Tensor],
                     domain: torch.Tensor | None = None) -> dist.TorchDistribution:
        """Likelihood of a cell's counts; genes are one event dimension."""
        if self.likelihood == "poisson":
            return dist.Poisson(decoded["mean"]).to_event(1)
        theta = self.inverse_dispersion(domain)
        if self.likelihood == "gaussian":  # the parameter holds log scales here
            return dist.Normal(decoded["mean"], theta).to_event(1)
        if self.likelihood == "zinb":
            return ZeroInflatedNegativeBinomial(decoded["mean"], theta, log_mean=decoded["log_mean"],
                                                gate_logits=decoded["gate_logits"]).to_event(1)
        return NegativeBinomial(decoded["mean"], theta, log_mean=decoded["log_mean"]).to_event(1)
