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
from ..data import BalancedSampler, CellBatch, CellData, CellSchema
from ..data.samplers import group_codes
from ..handlers import register_module
from ..nn import CountDecoder
from ..infer.steps import Adversary
from .blocks import PRIOR_MODES, ConditionalNormalPrior, LatentBlock, NormalPrior
from .dependence import block_total_correlation, conditional_hsic
from .energy_prior import ExponentialFamilyPrior
from .components import (category_codes, cells_plate, check_known_covariates,
                         covariate_values, emit_counts, feature_width, features, observe_all)
from .registry import register_model

__all__ = ["InVAE"]

PRIORS = (*PRIOR_MODES, "nonfactorized", "none")
#: the factor site of the block total-correlation penalty
TOTAL_CORRELATION = "total_correlation"
#: the factor site of the conditional-invariance penalty
CONDITIONAL_INVARIANCE = "conditional_invariance"
DEFAULT_INVARIANCE_WEIGHT = 10.0


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
    prior : {"variance", "mean", "both", "nonfactorized", "none"}
        What the covariates set in each prior (``"none"``: both blocks N(0, I)).
        ``"nonfactorized"`` (NF-inVAE): the invariant block gets an unnormalised exponential
        family fitted by score matching
        (:class:`~pyro_causalcell.models.energy_prior.ExponentialFamilyPrior`), the spurious
        block the variance prior.
    spurious_in_decoder : bool
        Give the spurious covariates to the decoder instead of learning a spurious block.
    encode_spurious : bool
        Give the spurious covariates to the encoder as well as the counts (never the invariant
        ones, which are unknown for new cells).
    tc_weight : float
        Weight of the block total-correlation penalty between ``z_inv`` and ``z_spur``
        (factor site ``"total_correlation"``, minibatch-weighted estimate,
        :func:`~pyro_causalcell.models.dependence.block_total_correlation`); 0: none.
    invariance_weight : float
        Weight of the conditional-invariance penalty: the HSIC between ``z_inv`` and the
        spurious covariates within each group of the invariant ones
        (:func:`~pyro_causalcell.models.dependence.conditional_hsic`, factor site
        ``"conditional_invariance"``), scaled to the data set; 0: none. It keeps technical
        variation out of ``z_inv`` when biology and batch are associated in the sample.
        Default: 10 where the model has a categorical invariant covariate and spurious ones,
        else 0 (not in the study; see the docs' inVAE page for what it changes).
    score_matching_lr : float
        Learning rate of the non-factorized prior's own optimiser.
    n_hidden, n_layers, likelihood, dispersion, dropout, norm, beta
        As in :class:`~pyro_causalcell.models.VAE`.

    Notes
    -----
    Sites: the covariates the data carries (observed), ``"z_inv"``, ``"z_spur"`` (unless
    ``spurious_in_decoder``), ``"expression"``, ``"counts"`` and, with ``tc_weight > 0``, the
    factor ``"total_correlation"``. With ``prior="nonfactorized"``, :meth:`adversaries` returns
    the score-matching objective, which :func:`~pyro_causalcell.infer.fit` trains after each
    ELBO step (history column ``adversary_score_matching``).
    """

    variants = {"invae": {}}
    #: what :func:`~pyro_causalcell.infer.latent` returns by default: the invariant block
    default_latent_site = sites.latent_site("inv")

    def __init__(self, schema: CellSchema, n_latent_inv: int = 10, n_latent_spur: int = 2,
                 invariant: Sequence[str] | None = None, spurious: Sequence[str] | None = None,
                 prior: str = "both", spurious_in_decoder: bool = False,
                 encode_spurious: bool = False, n_hidden: int = 128, n_layers: int = 1,
                 likelihood: str = "nb", dispersion: str = "gene", dropout: float = 0.0,
                 norm: str | None = None, beta: float = 1.0, tc_weight: float = 0.0,
                 invariance_weight: float | None = None, score_matching_lr: float = 1e-3):
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
        if prior not in PRIORS:
            raise ValueError(f"prior={prior!r}; choose one of {PRIORS}")
        categorical = [n for n in invariant if schema.categories_of(n) is not None]
        if invariance_weight is None:
            invariance_weight = DEFAULT_INVARIANCE_WEIGHT if categorical and spurious else 0.0
        for name, weight in [("tc_weight", tc_weight), ("invariance_weight", invariance_weight)]:
            if weight < 0:
                raise ValueError(f"{name} must be >= 0, got {weight}")
        if invariance_weight > 0 and not (categorical and spurious):
            raise ValueError("invariance_weight > 0 needs a categorical invariant covariate to "
                             "condition on and spurious covariates to be invariant to; this "
                             f"model has invariant={invariant}, spurious={spurious}")
        if tc_weight > 0 and (spurious_in_decoder and spurious or n_latent_spur < 1):
            raise ValueError("tc_weight > 0 penalises dependence between z_inv and z_spur, but "
                             "this model has no spurious block (spurious_in_decoder=True or "
                             "n_latent_spur=0); set tc_weight=0")
        self.init_args = dict(n_latent_inv=n_latent_inv, n_latent_spur=n_latent_spur,
                              invariant=invariant, spurious=spurious, prior=prior,
                              spurious_in_decoder=spurious_in_decoder,
                              encode_spurious=encode_spurious, n_hidden=n_hidden,
                              n_layers=n_layers, likelihood=likelihood, dispersion=dispersion,
                              dropout=dropout, norm=norm, beta=beta, tc_weight=tc_weight,
                              invariance_weight=invariance_weight,
                              score_matching_lr=score_matching_lr)
        self.schema, self.beta, self.tc_weight = schema, beta, tc_weight
        self.invariance_weight, self._conditioning = invariance_weight, categorical
        self.score_matching_lr = score_matching_lr
        self.invariant, self.spurious = invariant, spurious
        self.spurious_in_decoder = spurious_in_decoder and bool(spurious)
        hidden = [n_hidden] * n_layers
        n_encoder = feature_width(spurious, schema) if encode_spurious else 0
        self.encode_spurious = encode_spurious

        def block(name: str, n_latent: int, names: list[str]) -> LatentBlock:
            if not names or prior == "none":
                latent_prior = NormalPrior(n_latent)
            elif prior == "nonfactorized" and name == "inv":
                latent_prior = ExponentialFamilyPrior(feature_width(names, schema), n_latent,
                                                      hidden)
            else:
                mode = "variance" if prior == "nonfactorized" else prior
                latent_prior = ConditionalNormalPrior(feature_width(names, schema), n_latent,
                                                      mode=mode)
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

    def _encoder_covariates(self, batch: CellBatch) -> torch.Tensor | None:
        if not self.encode_spurious:
            return None
        check_known_covariates(batch, self.spurious, "this InVAE's encoder reads them "
                               "(encode_spurious=True); a model built with "
                               "encode_spurious=False encodes from the counts alone")
        return features(covariate_values(batch), self.spurious, self.schema)

    def model(self, batch: CellBatch) -> torch.Tensor:
        """Generative program; returns the ``(batch, n_genes)`` expected expression."""
        register_module(self.pyro_name, self)
        with cells_plate(batch):
            values = observe_all(batch, self.schema)
            with poutine.scale(scale=self.beta):
                z = [block.model(batch, features(values, names, self.schema))
                     for block, names in self._blocks()]
            if self.tc_weight > 0:
                self._total_correlation_penalty(batch, z)
            decoder_covariates = (features(values, self.spurious, self.schema)
                                  if self.spurious_in_decoder else None)
            expression = emit_counts(self.decoder, torch.cat(z, -1), batch, decoder_covariates,
                                     values.get(sites.DOMAIN))
        if self.invariance_weight > 0:
            self._invariance_penalty(batch, values, z[0])
        return expression

    def guide(self, batch: CellBatch) -> None:
        """``q(z_inv, z_spur | counts, spurious covariates)``: no invariant covariate needed."""
        register_module(self.pyro_name, self)
        encoder_covariates = self._encoder_covariates(batch)
        with cells_plate(batch), poutine.scale(scale=self.beta):
            for block, _ in self._blocks():
                block.guide(batch, encoder_covariates)

    def _total_correlation_penalty(self, batch: CellBatch, z: list[torch.Tensor]) -> None:
        """Factor ``"total_correlation"``: minus ``tc_weight`` times each cell's estimate, from
        the posterior samples ``z`` and the encoders' Gaussians of this minibatch."""
        covariates = self._encoder_covariates(batch)
        posteriors = [block.encoder(batch.counts, covariates) for block, _ in self._blocks()]
        tc = block_total_correlation(z, [loc for loc, _ in posteriors],
                                     [scale for _, scale in posteriors], batch.n_cells)
        pyro.factor(TOTAL_CORRELATION, -self.tc_weight * tc)

    def _invariance_penalty(self, batch: CellBatch, values: dict[str, torch.Tensor],
                            z_inv: torch.Tensor) -> None:
        """Factor ``"conditional_invariance"``: minus ``invariance_weight`` x cells x the HSIC
        of ``z_inv`` and the spurious covariates within groups of the invariant ones."""
        groups, n_groups = category_codes(values, self._conditioning, self.schema)
        dependence = conditional_hsic(z_inv, features(values, self.spurious, self.schema),
                                      groups, n_groups=n_groups)
        pyro.factor(CONDITIONAL_INVARIANCE, -self.invariance_weight * batch.n_cells * dependence)

    def default_sampler(self, data: CellData, batch_size: int) -> BalancedSampler | None:
        """With the invariance penalty: minibatches balanced over the groups of the invariant
        and spurious categorical covariates (weighted so the ELBO stays unbiased), so the
        penalty sees cells outside their label's usual batch at every step; ``None`` (random
        batches) without the penalty or when the groups outnumber half a batch."""
        names = [*self._conditioning,
                 *(n for n in self.spurious if self.schema.categories_of(n))]
        if (self.invariance_weight == 0 or len(names) < 2
                or any(data.covariate_values(n) is None for n in names)):
            return None  # (unknown covariates: the model's own error names them)
        if len(torch.unique(group_codes(data, names))) > batch_size // 2:
            return None
        return BalancedSampler(names)

    def adversaries(self) -> list[Adversary]:
        """The score-matching objective of the non-factorized prior (else none)."""
        if not isinstance(self.inv.prior, ExponentialFamilyPrior):
            return []
        return [Adversary("score_matching", self.inv.prior, self._score_matching_loss,
                          lr=self.score_matching_lr)]

    def _score_matching_loss(self, batch: CellBatch) -> torch.Tensor:
        """Score matching of the invariant prior on posterior samples (encoder left alone)."""
        with torch.no_grad():
            loc, scale = self.inv.encoder(batch.counts, self._encoder_covariates(batch))
            z = loc + scale * torch.randn_like(loc)
        covariates = features(covariate_values(batch), self.invariant, self.schema)
        return self.inv.prior.score_matching_loss(z, covariates)
