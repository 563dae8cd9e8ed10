r"""inVAE: conditionally invariant representations (Aliee, Kapl, Hediyeh-Zadeh, Theis, 2023).

Two latent blocks per cell: **invariant** latents :math:`z_{inv}` whose prior is set by the
biological covariates :math:`u_{inv}` (cell type, disease) and **spurious** latents
:math:`z_{spur}` whose prior is set by the technical ones :math:`u_{spur}` (batch, donor,
technology); the decoder sees both,

.. math::
    z_{inv} \sim p(z \mid u_{inv}), \quad z_{spur} \sim p(z \mid u_{spur}), \quad
    x \sim \mathrm{NB}\big(l\,\mathrm{softmax}(f(z_{inv}, z_{spur})),\ \theta\big).

The priors are conditional Normals whose variance (the study's default, iVAE-style), mean, or
both are set by the covariates; an empty covariate set gives :math:`\mathcal{N}(0, I)`. The
guide encodes a cell from its counts (and, optionally, its spurious covariates), never from its
invariant covariates, so cells whose label is unknown can be encoded.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence

import pyro
import torch
from pyro import poutine
from torch import nn

from .. import sites
from ..data import CellBatch, CellSchema
from ..nn import CountDecoder
from .blocks import PRIOR_MODES, ConditionalNormalPrior, LatentBlock, NormalPrior
from .components import (cells_plate, covariate_values, emit_counts, feature_width, features,
                         observe_all)
from .registry import register_model

__all__ = ["InVAE"]


@register_model
class InVAE(nn.Module):
    """Invariant and spurious latent blocks with covariate-conditioned priors.

    Parameters
    ----------
    schema : CellSchema
    n_latent_inv, n_latent_spur : int
        Sizes of the invariant and spurious blocks (sites ``"z_inv"``, ``"z_spur"``).
    invariant, spurious : list of str, optional
        Covariates whose values set each block's prior: ``"label"``, ``"domain"``,
        ``"perturbation"``, ``"dose"`` or named covariates. Default: the label (if the data has
        one) and the domain (if any).
    prior : {"variance", "mean", "both", "none"}
        What the covariates set in each prior (``"none"``: both blocks N(0, I)).
    spurious_in_decoder : bool
        Give the spurious covariates to the decoder instead of learning a spurious block.
    encode_spurious : bool
        Give the spurious covariates to the encoder as well as the counts (never the invariant
        ones, which are unknown for new cells).
    n_hidden, n_layers, likelihood, dispersion, dropout, norm, beta
        As in :class:`~pyro_causalcell.models.VAE`.

    Notes
    -----
    Sites: the covariates the data carries (observed), ``"z_inv"``, ``"z_spur"`` (unless
    ``spurious_in_decoder``), ``"expression"``, ``"counts"``.
    """

    variants = {"invae": {}}
    #: what :func:`~pyro_causalcell.infer.latent` returns by default: the invariant block
    default_latent_site = sites.latent_site("inv")

    def __init__(self, schema: CellSchema, n_latent_inv: int = 10, n_latent_spur: int = 2,
                 invariant: Sequence[str] | None = None, spurious: Sequence[str] | None = None,
                 prior: str = "variance", spurious_in_decoder: bool = False,
                 encode_spurious: bool = True, n_hidden: int = 128, n_layers: int = 1,
                 likelihood: str = "nb", dispersion: str = "gene", dropout: float = 0.0,
                 norm: str | None = None, beta: float = 1.0):
        super().__init__()
        carried = list(schema.carried)
        invariant = ([sites.LABEL] if sites.LABEL in carried else []) if invariant is None \
            else list(invariant)
        spurious = ([sites.DOMAIN] if sites.DOMAIN in carried else []) if spurious is None \
            else list(spurious)
        unknown = [n for n in [*invariant, *spurious] if n not in carried]
        if unknown:
            raise ValueError(f"covariates {unknown} are not carried by the data (it carries "
                             f"{carried}); encode them with CellData.from_anndata(..., "
                             "label_key=..., domain_key=..., categorical_covariate_keys=...)")
        if set(invariant) & set(spurious):
            raise ValueError(f"{sorted(set(invariant) & set(spurious))} cannot be both invariant "
                             "and spurious")
        if prior not in (*PRIOR_MODES, "none"):
            raise ValueError(f"prior={prior!r}; choose one of {(*PRIOR_MODES, 'none')}")
        self.init_args = dict(n_latent_inv=n_latent_inv, n_latent_spur=n_latent_spur,
                              invariant=invariant, spurious=spurious, prior=prior,
                              spurious_in_decoder=spurious_in_decoder,
                              encode_spurious=encode_spurious, n_hidden=n_hidden,
                              n_layers=n_layers, likelihood=likelihood, dispersion=dispersion,
                              dropout=dropout, norm=norm, beta=beta)
        self.schema, self.beta = schema, beta
        self.invariant, self.spurious = invariant, spurious
        self.spurious_in_decoder = spurious_in_decoder and bool(spurious)
        hidden = [n_hidden] * n_layers
        n_encoder = feature_width(spurious, schema) if encode_spurious else 0
        self.encode_spurious = encode_spurious

        def block(name: str, n_latent: int, names: list[str]) -> LatentBlock:
            conditional = names and prior != "none"
            latent_prior = (ConditionalNormalPrior(feature_width(names, schema), n_latent,
                                                   mode=prior) if conditional
                            else NormalPrior(n_latent))
            return LatentBlock(name, schema.n_genes, n_latent, latent_prior,
                               n_encoder_covariates=n_encoder, hidden=hidden, dropout=dropout,
                               norm=norm)

        self.inv = block("inv", n_latent_inv, invariant)
        self.spur = None if self.spurious_in_decoder else block("spur", n_latent_spur, spurious)
        n_decoded = n_latent_inv + (0 if self.spur is None else n_latent_spur)
        n_decoder_covariates = feature_width(spurious, schema) if self.spurious_in_decoder else 0
        self.decoder = CountDecoder(n_decoded, schema.n_genes, hidden,
                                    n_covariates=n_decoder_covariates, likelihood=likelihood,
                                    dispersion=dispersion, n_domains=schema.n_domains,
                                    dropout=dropout, norm=norm)
        self.pyro_name = f"invae_{uuid.uuid4().hex[:8]}"

    def _blocks(self) -> list[tuple[LatentBlock, list[str]]]:
        blocks = [(self.inv, self.invariant)]
        return blocks if self.spur is None else [*blocks, (self.spur, self.spurious)]

    def model(self, batch: CellBatch) -> torch.Tensor:
        """Generative program; returns the ``(batch, n_genes)`` expected expression."""
        pyro.module(self.pyro_name, self)
        with cells_plate(batch):
            values = observe_all(batch, self.schema)
            with poutine.scale(scale=self.beta):
                z = [block.model(batch, features(values, names, self.schema))
                     for block, names in self._blocks()]
            decoder_covariates = (features(values, self.spurious, self.schema)
                                  if self.spurious_in_decoder else None)
            return emit_counts(self.decoder, torch.cat(z, -1), batch, decoder_covariates,
                               values.get(sites.DOMAIN))

    def guide(self, batch: CellBatch) -> None:
        """``q(z_inv, z_spur | counts, spurious covariates)``: no invariant covariate needed."""
        pyro.module(self.pyro_name, self)
        encoder_covariates = (features(covariate_values(batch), self.spurious, self.schema)
                              if self.encode_spurious else None)
        with cells_plate(batch), poutine.scale(scale=self.beta):
            for block, _ in self._blocks():
                block.guide(batch, encoder_covariates)
