"""Variational autoencoder (and beta-VAE) for single-cell counts."""

from __future__ import annotations

import contextlib
import math
import uuid

import torch
from pyro import poutine
from torch import nn

from .. import sites
from ..data import CellBatch, CellSchema
from ..handlers import register_module
from ..nn import CountDecoder, GaussianEncoder
from .blocks import LatentBlock, NormalPrior
from .components import (cells_plate, covariate_features, emit_counts, observe_covariates,
                         observe_domain, one_hot)
from .registry import register_model


@register_model
class VAE(nn.Module):
    r"""VAE with an isotropic Gaussian prior; ``beta > 1`` gives the beta-VAE.

    Generative model, per cell :math:`n` with library size :math:`l_n` and domain :math:`d_n`:

    .. math::
        z_n \sim \mathcal{N}(0, I_K), \qquad
        x_n \sim \mathrm{NB}\big(l_n\,\mathrm{softmax}(f(z_n, d_n)),\ \theta\big).

    The KL term is weighted by ``beta`` (both ``"z"`` sites are scaled by it).

    Parameters
    ----------
    schema : CellSchema
        ``data.schema`` of the data the model will be fitted on.
    n_latent : int
    n_hidden : int
        Width of each hidden layer of encoder and decoder.
    n_layers : int
        Hidden layers in encoder and decoder.
    beta : float
        KL weight (1: VAE; > 1: beta-VAE).
    likelihood : {"nb", "zinb", "poisson"}
    dispersion : {"gene", "gene-domain"}
    use_domain : bool
        Give the one-hot domain to encoder and decoder (when the schema has domains), so the
        latent space need not encode batch.
    use_covariates : bool
        Give the named covariates (``schema.covariates``: one-hot categories, standardised
        numbers) to encoder and decoder, as scvi-tools does with its covariate keys.
    dropout : float
    norm : {None, "layer", "batch"}
        Normalisation of the hidden layers of encoder and decoder.

    Notes
    -----
    Sites: ``"domain"`` (observed, if the schema has domains), one observed site per named
    covariate (if ``use_covariates``), ``"z"`` (latent, ``(cells, n_latent)``),
    ``"expression"`` (deterministic), ``"counts"`` (observed).
    """

    #: command-line names (``causalcell fit --model vae``) and their constructor keywords
    variants = {"vae": {}}

    def __init__(self, schema: CellSchema, n_latent: int = 10, n_hidden: int = 128,
                 n_layers: int = 1, beta: float = 1.0, likelihood: str = "nb",
                 dispersion: str = "gene", use_domain: bool = True, dropout: float = 0.0,
                 norm: str | None = None, use_covariates: bool = True):
        super().__init__()
        if not (math.isfinite(beta) and beta > 0):
            raise ValueError(f"beta must be a finite number > 0, got {beta}")
        self.init_args = dict(n_latent=n_latent, n_hidden=n_hidden, n_layers=n_layers, beta=beta,
                              likelihood=likelihood, dispersion=dispersion,
                              use_domain=use_domain, dropout=dropout, norm=norm,
                              use_covariates=use_covariates)
        self.schema = schema
        self.n_latent = n_latent
        self.beta = beta
        self.n_domains = schema.n_domains
        self.use_domain = use_domain and self.n_domains > 0
        self.use_covariates = use_covariates and bool(schema.covariates)
        self.n_covariates = (self.n_domains if self.use_domain else 0) + (
            sum(c.n_features for c in schema.covariates) if self.use_covariates else 0)
        hidden = [n_hidden] * n_layers
        self.latent = LatentBlock("z", schema.n_genes, n_latent, NormalPrior(n_latent),
                                  n_encoder_covariates=self.n_covariates, hidden=hidden,
                                  dropout=dropout, norm=norm, site=sites.Z)
        #: further latent blocks decoded beside ``"z"`` (none here; subclasses add them)
        self.other_blocks = nn.ModuleList()
        self.decoder = self.count_decoder(n_latent)
        self.pyro_name = f"vae_{uuid.uuid4().hex[:8]}"
        self._register_load_state_dict_pre_hook(_encoder_saved_before_blocks, with_module=True)

    @property
    def encoder(self) -> GaussianEncoder:
        """The amortised posterior of ``"z"`` (the latent block's encoder)."""
        return self.latent.encoder

    def transform_latents(self, matrix: torch.Tensor, offset: torch.Tensor) -> None:
        """Re-express ``"z"`` as ``z' = matrix @ (z - offset)``: the encoder's location becomes
        ``z'`` and the decoder decodes ``z'`` exactly as it decoded ``z``; the encoder's scale is
        left as it was (not transformed: a fit that follows trains it again).

        Parameters
        ----------
        matrix : (n_latent, n_latent) invertible tensor
        offset : (n_latent,) tensor
        """
        if self.other_blocks:
            raise ValueError("transform_latents maps 'z' only; this model decodes further "
                             "latent blocks beside it")
        self.encoder.transform_loc(matrix, offset)
        self.decoder.transform_input(matrix, offset)

    def count_decoder(self, n_inputs: int) -> CountDecoder:
        """A count decoder of ``n_inputs`` latent dimensions with this model's settings."""
        args = self.init_args
        return CountDecoder(n_inputs, self.schema.n_genes, [args["n_hidden"]] * args["n_layers"],
                            n_covariates=self.n_covariates, likelihood=args["likelihood"],
                            dispersion=args["dispersion"], n_domains=self.n_domains,
                            dropout=args["dropout"], norm=args["norm"])

    def _covariates(self, domain: torch.Tensor | None,
                    covariates: dict[str, torch.Tensor]) -> torch.Tensor | None:
        """Encoder / decoder covariates: one-hot domain and the named covariates' features."""
        parts = []
        if self.use_domain:
            parts.append(one_hot(domain, self.n_domains))
        if self.use_covariates:
            parts.append(covariate_features(covariates, self.schema))
        return torch.cat(parts, -1) if parts else None

    # ------------------------------------------------------------------ hooks for subclasses
    def model_globals(self, batch: CellBatch) -> dict:
        """Global (non-per-cell) sites of the model; returns what :meth:`latent_prior` needs."""
        return {}

    def guide_globals(self, batch: CellBatch) -> None:
        """Guide for the sites of :meth:`model_globals`."""

    def latent_mechanisms(self, batch: CellBatch, globals_: dict):
        """Context (inside the cells plate) that may change the mechanism of ``"z"``.

        The control mechanism is ``Normal(0, I)``; subclasses return e.g. a
        :class:`~pyro_causalcell.handlers.StochasticInterventionMessenger`.
        """
        return contextlib.nullcontext()

    def latent_penalties(self, batch: CellBatch, latents: dict[str, torch.Tensor],
                         covariates: dict[str, torch.Tensor]) -> None:
        """Factor sites on the sampled latents, outside the cells plate (none here;
        :class:`~pyro_causalcell.models.HSICVAE` adds its HSIC penalty).

        ``latents``: ``(batch, n)`` samples by site name (``"z"`` and :attr:`other_blocks`);
        ``covariates``: the observed covariate values by site name."""

    # ------------------------------------------------------------------ protocol
    def model(self, batch: CellBatch) -> torch.Tensor:
        """Generative program; returns the ``(batch, n_genes)`` expected expression."""
        register_module(self.pyro_name, self)
        globals_ = self.model_globals(batch)
        with cells_plate(batch):
            domain = observe_domain(batch, self.n_domains) if self.n_domains else None
            covariates = observe_covariates(batch, self.schema) if self.use_covariates else {}
            with self.latent_mechanisms(batch, globals_), poutine.scale(scale=self.beta):
                latents = {block.site: block.model(batch)
                           for block in (self.latent, *self.other_blocks)}
            expression = emit_counts(self.decoder, torch.cat(list(latents.values()), -1), batch,
                                     self._covariates(domain, covariates), domain)
        observed = dict(covariates) if domain is None else {sites.DOMAIN: domain, **covariates}
        self.latent_penalties(batch, latents, observed)
        return expression

    def guide(self, batch: CellBatch) -> torch.Tensor:
        """Amortised posterior ``q(z | counts, domain)``; returns the sampled ``z``."""
        register_module(self.pyro_name, self)
        self.guide_globals(batch)
        features = self._covariates(batch.domain, batch.covariates)
        with cells_plate(batch), poutine.scale(scale=self.beta):
            for block in self.other_blocks:
                block.guide(batch, features)
            return self.latent.guide(batch, features)


def _encoder_saved_before_blocks(module, state_dict, prefix, *args) -> None:
    """Load files written before ``"z"`` was a latent block (``encoder.*`` instead of
    ``latent.encoder.*``)."""
    for key in [k for k in state_dict if k.startswith(prefix + "encoder.")]:
        state_dict.setdefault(prefix + "latent." + key[len(prefix):], state_dict.pop(key))
