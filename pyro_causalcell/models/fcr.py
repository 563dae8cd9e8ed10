r"""FCR: factorized causal representations of cellular responses (Mao, Lopez, Liu, Hütter,
Richmond, Benos, Qiu, NeurIPS 2024).

Per cell, a covariate :math:`x` (cell line, cell type, patient: the domain and named
covariates) and a treatment :math:`t` (the multi-hot perturbation, times the dose when the data
has one; controls are :math:`t = 0`) set the priors of three latent blocks, and the decoder sees
the blocks only:

.. math::
    z_x \sim p(z_x \mid x), \quad z_t \sim p(z_t \mid t), \quad
    z_{tx} \sim p(z_{tx} \mid x, t), \quad
    y \sim \mathrm{NB}\big(l\,\mathrm{softmax}(f(z_x, z_t, z_{tx})),\ \theta\big).

:math:`z_t` is the part of the response every context shares, :math:`z_{tx}` the part
specific to a context, :math:`z_x` what the context alone explains. The interaction prior is
built from the elementwise product of a covariate and a treatment embedding
(:class:`~pyro_causalcell.models.blocks.InteractionPrior`), so a (covariate, treatment) pair
never measured still has one, and ``pyro.do`` on ``"perturbation"`` or ``"domain"`` predicts it.

Two regularisers keep the blocks apart, as the study's objective asks:

- **causal-structure** terms (factor sites ``"covariate_prediction"`` and
  ``"treatment_prediction"``): classifiers predicting :math:`x` from :math:`z_x` and :math:`t`
  from :math:`(z_t, z_{tx})`, whose log-likelihoods join the objective;
- **permutation discriminators** (factor site ``"permutation_discriminators"``,
  :mod:`~pyro_causalcell.models.discriminators`): networks telling real
  :math:`(z_x, z_{tx})` and :math:`(z_t, z_{tx})` pairs from pairs whose :math:`z_{tx}` was
  permuted among the cells of the same :math:`(x, t)` group, trained as an
  :class:`~pyro_causalcell.infer.steps.Adversary` after each ELBO step; the encoders are
  penalised to fool them, so :math:`z_{tx}` carries nothing about :math:`z_x` or :math:`z_t`
  beyond :math:`(x, t)`.
"""

from __future__ import annotations

import uuid
from collections.abc import Sequence
from typing import NamedTuple

import pyro
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn

from .. import sites
from ..data import BalancedSampler, CellBatch, CellData, CellSchema
from ..data.samplers import group_codes
from ..handlers import register_module
from ..infer.steps import Adversary
from ..nn import MLP, CountDecoder
from .blocks import ConditionalNormalPrior, InteractionPrior, LatentBlock
from .components import (category_codes, cells_plate, check_known_covariates,
                         covariate_values, emit_counts, feature_width, features, observe_all,
                         one_hot, row_table_codes)
from .dependence import conditional_hsic
from .discriminators import PermutationDiscriminator, within_group_permutation
from .registry import register_model

__all__ = ["FCR"]

#: factor sites of the causal-structure terms and of the encoders' discriminator penalty
COVARIATE_PREDICTION = "covariate_prediction"
TREATMENT_PREDICTION = "treatment_prediction"
PERMUTATION_DISCRIMINATORS = "permutation_discriminators"
#: factor site shrinking the interaction prior's means towards the controls'
INTERACTION_SHRINKAGE = "interaction_shrinkage"
#: factor site of the conditional-independence penalty (z_x indep. t | x, z_t indep. x | t)
CONDITIONAL_INDEPENDENCE = "conditional_independence"


def row_codes(rows: torch.Tensor) -> torch.Tensor:
    """``(batch,)`` long index of each row's distinct value in a ``(batch, width)`` tensor."""
    return torch.unique(rows, dim=0, return_inverse=True)[1]


class GroupCodes(NamedTuple):
    """The groups of a minibatch's cells that FCR's regularisers condition on.

    ``treatment`` / ``covariate``: ``(batch,)`` codes below ``n_treatments`` / ``n_covariates``
    (``covariate`` is None without categorical covariates); ``control``: the treatment code
    of control cells, or None when there are none.
    """

    treatment: torch.Tensor
    n_treatments: int
    covariate: torch.Tensor | None
    n_covariates: int
    control: int | None

    def pairs(self) -> tuple[torch.Tensor, int]:
        """``(batch,)`` codes of the (covariate, treatment) groups and their number."""
        if self.covariate is None:
            return self.treatment, self.n_treatments
        return (self.covariate * self.n_treatments + self.treatment,
                self.n_covariates * self.n_treatments)


@register_model
class FCR(nn.Module):
    """Covariate, treatment and interaction latent blocks with causal-structure
    regularisation and permutation discriminators.

    Parameters
    ----------
    schema : CellSchema
        Needs a perturbation (the treatment) and at least one covariate (the domain or a named
        covariate).
    n_latent_x, n_latent_t, n_latent_tx : int
        Sizes of the blocks ``"z_x"``, ``"z_t"``, ``"z_tx"``.
    covariates : list of str, optional
        What :math:`x` is: ``"domain"``, ``"label"`` and named covariates. Default: the domain
        and every named covariate the data carries.
    classifier_weight : float
        Weight of the two causal-structure log-likelihoods (0: none).
    discriminator_weight : float
        Weight of the encoders' penalty for being told apart by the permutation discriminators
        (0: no discriminators).
    discriminator_lr : float
        Learning rate of the discriminators' own Adam.
    discriminator_steps : int
        Discriminator updates per ELBO step.
    n_embedding : int
        Width of the interaction prior's embeddings.
    n_hidden, n_layers, likelihood, dispersion, dropout, norm, beta
        As in :class:`~pyro_causalcell.models.VAE`; ``likelihood="gaussian"`` models
        log-normalised expression (the study's choice).

    Notes
    -----
    Sites: the covariates the data carries (observed; ``pyro.do`` on ``"perturbation"``,
    ``"dose"``, ``"domain"`` or a named covariate reaches the priors), ``"z_x"``, ``"z_t"``,
    ``"z_tx"`` (cells plate), ``"expression"``, ``"counts"``, and the factor sites above.
    The encoders see the counts and the cell's own covariate and treatment.
    """

    variants = {"fcr": {}}
    #: what :func:`~pyro_causalcell.infer.latent` returns by default: the shared response
    default_latent_site = sites.latent_site("t")

    def __init__(self, schema: CellSchema, n_latent_x: int = 8, n_latent_t: int = 8,
                 n_latent_tx: int = 8, covariates: Sequence[str] | None = None,
                 classifier_weight: float = 1.0, discriminator_weight: float = 10.0,
                 discriminator_lr: float = 3e-3, discriminator_steps: int = 3,
                 interaction_shrinkage: float = 1.0, independence_weight: float = 10.0,
                 n_embedding: int = 32, n_hidden: int = 128, n_layers: int = 1,
                 likelihood: str = "nb", dispersion: str = "gene", dropout: float = 0.0,
                 norm: str | None = None, beta: float = 1.0):
        super().__init__()
        if schema.perturbation_key is None:
            raise ValueError("FCR needs a treatment: encode the data with "
                             "CellData.from_anndata(..., perturbation_key=..., control=...)")
        carried = [n for n in schema.carried if n not in (sites.PERTURBATION, sites.DOSE)]
        covariates = ([n for n in carried if n != sites.LABEL] if covariates is None
                      else list(covariates))
        unknown = [n for n in covariates if n not in carried]
        if not covariates or unknown:
            raise ValueError(f"covariates={covariates}: FCR needs at least one covariate the "
                             f"data carries besides the treatment ({carried}); encode it with "
                             "CellData.from_anndata(..., domain_key=..., "
                             "categorical_covariate_keys=...)")
        for name, weight in [("classifier_weight", classifier_weight),
                             ("discriminator_weight", discriminator_weight),
                             ("interaction_shrinkage", interaction_shrinkage),
                             ("independence_weight", independence_weight)]:
            if weight < 0:
                raise ValueError(f"{name} must be >= 0, got {weight}")
        self.init_args = dict(
            n_latent_x=n_latent_x, n_latent_t=n_latent_t, n_latent_tx=n_latent_tx,
            covariates=covariates, classifier_weight=classifier_weight,
            discriminator_weight=discriminator_weight, discriminator_lr=discriminator_lr,
            discriminator_steps=discriminator_steps, interaction_shrinkage=interaction_shrinkage,
            independence_weight=independence_weight,
            n_embedding=n_embedding,
            n_hidden=n_hidden, n_layers=n_layers, likelihood=likelihood, dispersion=dispersion,
            dropout=dropout, norm=norm, beta=beta)
        self.schema, self.covariates, self.beta = schema, covariates, beta
        self.classifier_weight, self.discriminator_weight = classifier_weight, discriminator_weight
        self.discriminator_lr, self.discriminator_steps = discriminator_lr, discriminator_steps
        self.interaction_shrinkage = interaction_shrinkage
        self.independence_weight = independence_weight
        #: categorical covariates: what the covariate classifier predicts and groups are made of
        self.categorical = [n for n in covariates if schema.categories_of(n) is not None]
        n_x = feature_width(covariates, schema)
        n_t = schema.n_perturbations
        hidden = [n_hidden] * n_layers
        block = dict(hidden=hidden, dropout=dropout, norm=norm)
        self.x_block = LatentBlock("x", schema.n_genes, n_latent_x,
                                   ConditionalNormalPrior(n_x, n_latent_x, mode="mean"),
                                   n_encoder_covariates=n_x, **block)
        self.t_block = LatentBlock("t", schema.n_genes, n_latent_t,
                                   ConditionalNormalPrior(n_t, n_latent_t, mode="mean"),
                                   n_encoder_covariates=n_t, **block)
        self.tx_block = LatentBlock("tx", schema.n_genes, n_latent_tx,
                                    InteractionPrior(n_x, n_t, n_latent_tx, n_embedding),
                                    n_encoder_covariates=n_x + n_t, **block)
        self.decoder = CountDecoder(n_latent_x + n_latent_t + n_latent_tx, schema.n_genes,
                                    hidden, likelihood=likelihood, dispersion=dispersion,
                                    n_domains=schema.n_domains, dropout=dropout, norm=norm)
        self.covariate_classifiers = nn.ModuleDict({
            name: MLP(n_latent_x, len(schema.categories_of(name)), hidden)
            for name in self.categorical})
        self.treatment_classifier = MLP(n_latent_t + n_latent_tx, n_t, hidden)
        n_groups = feature_width(self.categorical, schema) + n_t
        self.discriminators = nn.ModuleDict({
            "x": PermutationDiscriminator(n_latent_x, n_latent_tx, n_groups),
            "t": PermutationDiscriminator(n_latent_t, n_latent_tx, n_groups)})
        #: distinct treatment rows of the training cells (``prepare_fit``): training steps code
        #: a batch's treatments against it without reading the batch on the host
        self.register_buffer("treatment_table", None, persistent=False)
        self.pyro_name = f"fcr_{uuid.uuid4().hex[:8]}"

    # ------------------------------------------------------------------ features
    def treatment_features(self, values: dict[str, torch.Tensor]) -> torch.Tensor:
        """``(batch, n_perturbations)`` :math:`t`: the multi-hot perturbation, times the dose
        when the data has one."""
        treatment = values[sites.PERTURBATION].to(torch.get_default_dtype())
        if sites.DOSE in values:
            treatment = treatment * values[sites.DOSE].to(treatment.dtype).unsqueeze(-1)
        return treatment

    def _features(self, values: dict[str, torch.Tensor]
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """Covariate features, treatment features, and the categorical covariates' features
        (what groups are made of; ``None`` without categorical covariates)."""
        return (features(values, self.covariates, self.schema),
                self.treatment_features(values),
                features(values, self.categorical, self.schema))

    # ------------------------------------------------------------------ protocol
    def model(self, batch: CellBatch) -> torch.Tensor:
        """Generative program; returns the ``(batch, n_genes)`` expected expression."""
        register_module(self.pyro_name, self)
        with cells_plate(batch):
            values = observe_all(batch, self.schema)
            x, t, x_groups = self._features(values)
            with poutine.scale(scale=self.beta):
                z_x = self.x_block.model(batch, x)
                z_t = self.t_block.model(batch, t)
                z_tx = self.tx_block.model(batch, torch.cat([x, t], -1))
            if self.interaction_shrinkage > 0:
                self._shrink_interactions(batch, x, t)
            if self.classifier_weight > 0:
                self._structure_terms(values, z_x, z_t, z_tx)
            expression = emit_counts(self.decoder, torch.cat([z_x, z_t, z_tx], -1), batch,
                                     None, values.get(sites.DOMAIN))
        if self.independence_weight > 0 or self.discriminator_weight > 0:
            groups = self._groups(values, t)
        if self.independence_weight > 0:
            dependence = (self._conditional_dependence(groups, z_x, z_t)
                          + self._interaction_main_effect(groups, z_tx))
            pyro.factor(CONDITIONAL_INDEPENDENCE,
                        -self.independence_weight * batch.n_cells * dependence)
        if self.discriminator_weight > 0:
            fooled = self._discriminator_loss(z_x, z_t, z_tx, x_groups, t, groups, fool=True)
            pyro.factor(PERMUTATION_DISCRIMINATORS,
                        -self.discriminator_weight * batch.n_cells * fooled)
        return expression

    def guide(self, batch: CellBatch) -> dict[str, torch.Tensor]:
        """``q(z_x | y, x) q(z_t | y, t) q(z_tx | y, x, t)``; returns the samples by site."""
        register_module(self.pyro_name, self)
        x, t, _ = self._features(self._known_values(batch))
        with cells_plate(batch), poutine.scale(scale=self.beta):
            return {block.site: block.guide(batch, u) for block, u in
                    [(self.x_block, x), (self.t_block, t),
                     (self.tx_block, torch.cat([x, t], -1))]}

    def _known_values(self, batch: CellBatch) -> dict[str, torch.Tensor]:
        needed = [*self.covariates, sites.PERTURBATION,
                  *([sites.DOSE] if self.schema.dose_key is not None else [])]
        check_known_covariates(batch, needed, "FCR's encoders read the covariate and the "
                               "treatment of each cell")
        return covariate_values(batch)

    # ------------------------------------------------------------------ regularisers
    def _structure_terms(self, values: dict[str, torch.Tensor], z_x: torch.Tensor,
                         z_t: torch.Tensor, z_tx: torch.Tensor) -> None:
        """Per-cell factors: log p(x | z_x) and log p(t present | z_t, z_tx), weighted."""
        if self.categorical:
            log_likelihood = sum(
                torch.log_softmax(self.covariate_classifiers[name](z_x), -1)
                .gather(-1, values[name].long().unsqueeze(-1)).squeeze(-1)
                for name in self.categorical)
            pyro.factor(COVARIATE_PREDICTION, self.classifier_weight * log_likelihood)
        present = (values[sites.PERTURBATION] > 0).to(z_t.dtype)
        logits = self.treatment_classifier(torch.cat([z_t, z_tx], -1))
        log_likelihood = -F.binary_cross_entropy_with_logits(logits, present,
                                                             reduction="none").sum(-1)
        pyro.factor(TREATMENT_PREDICTION, self.classifier_weight * log_likelihood)

    def _shrink_interactions(self, batch: CellBatch, x: torch.Tensor, t: torch.Tensor) -> None:
        """Per-cell factor: minus ``interaction_shrinkage / 2`` x the squared shift of the
        cell's interaction prior mean from the controls' (what a pair never seen together is
        predicted to add shrinks towards nothing), plus the cell's share of the spread of the
        covariate embeddings (:meth:`InteractionPrior.embedding_spread`)."""
        prior = self.tx_block.prior
        shift = prior.interaction(torch.cat([x, t], -1))
        penalty = shift.pow(2).sum(-1) + prior.embedding_spread() / batch.n_cells
        pyro.factor(INTERACTION_SHRINKAGE, -0.5 * self.interaction_shrinkage * penalty)

    def prepare_fit(self, data: CellData, train_index: torch.Tensor) -> None:
        """Called by :func:`~pyro_causalcell.fit` before training: note the distinct
        treatments of the training cells, so each step codes its groups on the device."""
        index = train_index.to(data.device)
        values = {sites.PERTURBATION: data.perturbation.index_select(0, index)}
        if self.schema.dose_key is not None and data.dose is not None:
            values[sites.DOSE] = data.dose.index_select(0, index)
        table = torch.unique(self.treatment_features(values), dim=0)
        controls = torch.nonzero((table == 0).all(-1)).flatten().tolist()
        self._control_treatment = controls[0] if controls else None
        self.treatment_table = table.to(next(self.parameters()).device)

    def _groups(self, values: dict[str, torch.Tensor], t: torch.Tensor) -> GroupCodes:
        """The batch's treatment and covariate groups. In training they are coded against the
        training treatments and the covariates' categories (no host read); otherwise (queries,
        whose treatments may be new) from the batch itself."""
        covariate, n_covariates = (category_codes(values, self.categorical, self.schema)
                                   if self.categorical else (None, 1))
        table = self.treatment_table
        if self.training and table is not None:
            return GroupCodes(row_table_codes(t, table), len(table), covariate, n_covariates,
                              self._control_treatment)
        treatment = row_codes(t)
        control = (t == 0).all(-1)
        return GroupCodes(treatment, int(treatment.max()) + 1, covariate, n_covariates,
                          int(treatment[control][0]) if bool(control.any()) else None)

    def _conditional_dependence(self, groups: GroupCodes, z_x: torch.Tensor,
                                z_t: torch.Tensor) -> torch.Tensor:
        """Normalised HSIC of z_x with the treatment within covariate groups, plus that of z_t
        with the covariate within treatment groups (:func:`conditional_hsic`)."""
        if groups.covariate is None:  # continuous covariates only: no covariate groups
            return z_x.new_zeros(())
        treatments = one_hot(groups.treatment, groups.n_treatments)
        covariates = one_hot(groups.covariate, groups.n_covariates)
        return (conditional_hsic(z_x, treatments, groups.covariate,
                                 n_groups=groups.n_covariates)
                + conditional_hsic(z_t, covariates, groups.treatment,
                                   n_groups=groups.n_treatments))

    def _interaction_main_effect(self, groups: GroupCodes, z_tx: torch.Tensor) -> torch.Tensor:
        """Squared distance of each treatment group's mean z_tx from the controls' mean,
        averaged with the groups' shares of the minibatch (0 without controls in the batch):
        a treatment's effect common to every context belongs to z_t, which
        ``do(perturbation)`` moves by its prior."""
        if groups.control is None:
            return z_tx.new_zeros(())
        codes, n_groups = groups.treatment, groups.n_treatments
        sums = z_tx.new_zeros(n_groups, z_tx.shape[-1]).index_add(0, codes, z_tx)
        sizes = one_hot(codes, n_groups).sum(0).to(z_tx.dtype)
        means = sums / sizes.clamp(min=1.0).unsqueeze(-1)
        reference = means[groups.control]
        spread = ((means - reference).pow(2).sum(-1) * sizes).sum() / len(z_tx)
        return spread * (sizes[groups.control] > 0).to(z_tx.dtype)

    def _discriminator_loss(self, z_x: torch.Tensor, z_t: torch.Tensor, z_tx: torch.Tensor,
                            x_groups: torch.Tensor | None, t: torch.Tensor,
                            groups: GroupCodes, *, fool: bool) -> torch.Tensor:
        """Both discriminators' mean cross-entropy on one permutation of z_tx within the
        (x, t) groups."""
        features_ = t if x_groups is None else torch.cat([x_groups, t], -1)
        codes, n_groups = groups.pairs()
        index = within_group_permutation(codes, n_groups=n_groups)
        return sum(self.discriminators[name].loss(z, z_tx, features_, index, fool=fool)
                   for name, z in [("x", z_x), ("t", z_t)])

    def _discriminators_own_loss(self, batch: CellBatch) -> torch.Tensor:
        """The discriminators' loss on latents drawn from the guide (encoders left alone)."""
        with torch.no_grad():
            z = self.guide(batch)
            values = covariate_values(batch)
            x_groups = features(values, self.categorical, self.schema)
            t = self.treatment_features(values)
        return self._discriminator_loss(z["z_x"], z["z_t"], z["z_tx"], x_groups, t,
                                        self._groups(values, t), fool=False)

    def adversaries(self) -> list[Adversary]:
        """The permutation discriminators, trained on their own Adam after each ELBO step
        (history column ``adversary_permutation``); none with ``discriminator_weight=0``."""
        if self.discriminator_weight == 0:
            return []
        return [Adversary("permutation", self.discriminators, self._discriminators_own_loss,
                          steps=self.discriminator_steps, lr=self.discriminator_lr, eps=1e-8)]

    def default_sampler(self, data: CellData, batch_size: int) -> BalancedSampler | None:
        """Minibatches balanced over the (categorical covariate, perturbation) groups (weighted,
        so the ELBO stays unbiased), so every group has partners to permute among; ``None``
        (random batches) without discriminators or when the groups outnumber a quarter of
        a batch."""
        names = [*self.categorical, sites.PERTURBATION]
        if self.discriminator_weight == 0 or any(data.covariate_values(n) is None
                                                 for n in names):
            return None
        if len(torch.unique(group_codes(data, names))) > batch_size // 4:
            return None
        return BalancedSampler(names)
