r"""Sparse mechanism shift VAEs: VAE, iVAE, sVAE and sVAE+ (Lopez et al., CLeaR 2023).

Latents :math:`z \in \mathbb{R}^K` of a control cell follow :math:`\mathcal{N}(0, I)`.
Perturbation :math:`p` is a stochastic intervention on its targets: in each cell it hits latent
:math:`k` with probability :math:`\pi_{pk}` (:math:`m_{pk} \sim \mathrm{Bernoulli}(\pi_{pk})`,
drawn per cell as in the study), and a hit latent follows :math:`\mathcal{N}(\delta_{pk}, 1)`;
several perturbations in one cell add their shifts. The per-cell indicators are summed out
exactly (:func:`~pyro_causalcell.distributions.shift_mixture`), so no relaxation or
straight-through estimator is needed. The decoder sees :math:`z` only, so a perturbation can
act on expression only through its targets.

``sparsity`` chooses the model:

- ``"vae"``: no perturbation prior (the baseline);
- ``"ivae"``: every latent is a target (:math:`\pi \equiv 1`, dense learned shifts);
- ``"svae"``: flat prior on :math:`\pi` and an L0-style penalty
  :math:`\lambda \sum_{pk} \pi_{pk}` on the expected number of targets;
- ``"svae+"``: spike and slab, :math:`\pi_{pk} \sim \mathrm{Beta}(1, \lambda)`.

Each sparsity is a perturbation-prior object (:mod:`~pyro_causalcell.models.shift_priors`)
held as ``model.shifts``: ``None`` for the VAE, :class:`DenseShifts` for iVAE,
:class:`SparseShifts` for sVAE / sVAE+. Global sites in ``pyro.plate("perturbations", P)``: ``"shift"`` :math:`\delta` (Normal prior,
Normal guide) and, for sVAE / sVAE+, ``"target_probability"`` :math:`\pi` (Beta guide), so a fit
gives a posterior over targets (:func:`target_probabilities`, and credible intervals from
:func:`~pyro_causalcell.infer.global_posterior`).
"""

from __future__ import annotations

import uuid

import numpy as np
import pandas as pd
import pyro.distributions as dist
import torch
from torch import nn

from .. import sites
from ..data import CellBatch, CellSchema
from ..handlers import StochasticInterventionMessenger
from ..infer.schedule import sparse_shift_schedule
from .components import observe_perturbation
from .registry import register_model
from .shift_priors import DenseShifts, SparseShifts
from .vae import VAE

SPARSITY = ("vae", "ivae", "svae", "svae+")
#: sparsity_weight="auto": lambda per median training cell of a perturbation
AUTO_SPARSITY = {"svae": 0.6, "svae+": 0.4}
#: the lambda that sparsity_weight="auto" stands for until a fit has seen training cells
AUTO_SPARSITY_BEFORE_FIT = 50.0


@register_model
class SparseShiftVAE(VAE):
    """VAE whose perturbations are sparse stochastic interventions on the latents.

    Parameters
    ----------
    schema : CellSchema
        Must have perturbations (``perturbation_key``) unless ``sparsity="vae"``.
    n_latent, n_hidden, n_layers, beta, likelihood, dispersion, use_domain, dropout, norm
        As in :class:`~pyro_causalcell.models.VAE`; the defaults (two hidden layers of 128,
        batch norm, dropout 0.1) are the study's, and batch norm recovered the simulated
        latents markedly better than layer norm or none in our runs.
    use_covariates : bool
        As in :class:`~pyro_causalcell.models.VAE`.
    sparsity : {"vae", "ivae", "svae", "svae+"}
    sparsity_weight : float or "auto"
        :math:`\\lambda`: penalty per expected target (sVAE) or the Beta(1, lambda) prior on
        target probabilities (sVAE+; lambda = 1 is flat, no sparsity). For sVAE+ a true
        target's probability settles near ``n / (n + lambda)`` for ``n`` cells of the
        perturbation, so lambda must stay below the cells per perturbation. ``"auto"`` (the
        default) sets it when :func:`~pyro_causalcell.infer.fit` first sees the training
        cells: :data:`AUTO_SPARSITY` times the median number of training cells per
        perturbation (sVAE+: 0.4, a true target then settles near 0.71; sVAE: 0.6), the
        ratios of the weights chosen on the study's design (100 and 150 at 250 cells). The
        value is then kept (``model.sparsity_weight``, saved with the model); before any fit,
        ``"auto"`` acts as :data:`AUTO_SPARSITY_BEFORE_FIT`.
    shift_prior_scale : float
        Standard deviation of the Normal prior on shifts.

    Notes
    -----
    Sites: global ``"shift"`` and (sVAE, sVAE+) ``"target_probability"``, each ``(P, K)`` in
    the ``"perturbations"`` plate; per cell ``"domain"`` (if any), ``"perturbation"``
    (observed multi-hot), ``"z"``, ``"expression"``, ``"counts"``.
    """

    variants = {name: {"sparsity": name} for name in ("ivae", "svae", "svae+")}

    def __init__(self, schema: CellSchema, n_latent: int = 15, n_hidden: int = 128,
                 n_layers: int = 2, sparsity: str = "svae+",
                 sparsity_weight: float | str = "auto",
                 shift_prior_scale: float = 10.0, beta: float = 1.0, likelihood: str = "nb",
                 dispersion: str = "gene", use_domain: bool = True, dropout: float = 0.1,
                 norm: str | None = "batch", use_covariates: bool = True):
        if sparsity not in SPARSITY:
            raise ValueError(f"sparsity={sparsity!r}; choose one of {SPARSITY}")
        if sparsity != "vae" and schema.n_perturbations == 0:
            raise ValueError(f"sparsity={sparsity!r} needs perturbations: build the data with "
                             "CellData.from_anndata(..., perturbation_key=..., control=...)")
        if isinstance(sparsity_weight, str):
            if sparsity_weight != "auto":
                raise ValueError(f"sparsity_weight={sparsity_weight!r}; give a number >= 0 or "
                                 "'auto' (set from the training cells per perturbation)")
        elif not sparsity_weight >= 0:
            raise ValueError(f"sparsity_weight must be >= 0 or 'auto', got {sparsity_weight}")
        if shift_prior_scale <= 0:
            raise ValueError(f"shift_prior_scale must be > 0, got {shift_prior_scale}")
        super().__init__(schema, n_latent=n_latent, n_hidden=n_hidden, n_layers=n_layers,
                         beta=beta, likelihood=likelihood, dispersion=dispersion,
                         use_domain=use_domain, dropout=dropout, norm=norm,
                         use_covariates=use_covariates)
        self.init_args.update(sparsity=sparsity, sparsity_weight=sparsity_weight,
                              shift_prior_scale=shift_prior_scale)
        self.sparsity = sparsity
        self.sparsity_weight = sparsity_weight
        self.shift_prior_scale = shift_prior_scale
        make_prior = SHIFT_PRIORS[sparsity]
        weight = AUTO_SPARSITY_BEFORE_FIT if sparsity_weight == "auto" else sparsity_weight
        self.shifts = None if make_prior is None else make_prior(
            schema.n_perturbations, n_latent, shift_prior_scale, weight)
        self.pyro_name = f"sparse_shift_{uuid.uuid4().hex[:8]}"
        self._register_load_state_dict_pre_hook(_tables_saved_before_shift_priors,
                                                with_module=True)

    def perturbation_parameters(self) -> dict[str, nn.Parameter]:
        """The per-perturbation tables, each ``(n_perturbations, n_latent)``, by name.

        Row ``p`` belongs to ``schema.perturbations[p]``; these are what
        :func:`~pyro_causalcell.infer.transfer` learns for new perturbations.
        """
        return {} if self.shifts is None else self.shifts.tables()

    def add_perturbations(self, names) -> None:
        """Make room for new perturbations: extend the schema and every per-perturbation table.

        New rows start at the prior's initial values; known rows are unchanged.
        """
        self.schema = self.schema.with_perturbations(names)
        if self.shifts is not None:
            self.shifts.add(len(self.schema.perturbations) - self.shifts.shift_loc.shape[0])

    @staticmethod
    def default_schedule(n_cells: int) -> dict:
        """The training schedule of these models on ``n_cells`` cells (``max_epochs``,
        ``batch_size``, ``lr``, ``kl_warmup_epochs``, ``free_bits``, ``realign_after``):
        :func:`~pyro_causalcell.infer.sparse_shift_schedule`, which ``causalcell fit`` uses
        for settings left at "auto"."""
        return sparse_shift_schedule(n_cells)

    def prepare_fit(self, data, train_index: torch.Tensor) -> None:
        """Note the most perturbations any training cell carries (the mixture's size in every
        training step, known without reading each batch on the host), and set an ``"auto"``
        sparsity weight from the training cells per perturbation."""
        if self.shifts is None or data.perturbation is None:
            return
        perturbation = data.perturbation.index_select(0, train_index.to(data.device))
        counts = perturbation.sum(-1)
        self.shifts.max_active = int(counts.max()) if len(counts) else 1
        median = median_cells_per_perturbation(perturbation)
        if self.sparsity_weight == "auto" and self.sparsity in AUTO_SPARSITY and median > 0:
            weight = round(AUTO_SPARSITY[self.sparsity] * median, 4)
            self.sparsity_weight = self.shifts.sparsity_weight = weight
            self.init_args["sparsity_weight"] = weight

    @property
    def has_targets(self) -> bool:
        """Whether target probabilities are learned (sVAE, sVAE+)."""
        return self.shifts is not None and self.shifts.has_targets

    def target_posterior(self) -> dist.Beta:
        r"""The guide's ``Beta`` over :math:`\pi`, batch shape ``(P, K)``."""
        return self.shifts.target_posterior()

    def model_globals(self, batch: CellBatch) -> dict:
        return {} if self.shifts is None else self.shifts.model_globals()

    def guide_globals(self, batch: CellBatch) -> None:
        if self.shifts is not None:
            self.shifts.guide_globals()

    def latent_mechanisms(self, batch: CellBatch, globals_: dict):
        """Latents of perturbed cells follow the perturbation prior's mechanism."""
        if self.shifts is None:
            return super().latent_mechanisms(batch, globals_)
        perturbation = observe_perturbation(batch)  # (cells, P), intervenable
        mechanism = self.shifts.mechanism(perturbation, globals_)
        perturbed = (perturbation.sum(-1, keepdim=True) > 0).to(perturbation.dtype)
        return StochasticInterventionMessenger(sites.Z, mechanism, perturbed)


def median_cells_per_perturbation(perturbation: torch.Tensor) -> float:
    """Median over perturbations (those some cell carries) of their cells; 0 without any.

    The mean of the two middle values for an even number of perturbations, as ``np.median``.

    Parameters
    ----------
    perturbation : (cells, P) multi-hot tensor
        A cell with a combination counts for each of its perturbations.
    """
    cells = (perturbation > 0).sum(0)
    cells = cells[cells > 0].double()
    return float(cells.quantile(0.5)) if len(cells) else 0.0


def _table(name: str) -> property:
    """``model.<name>``: the perturbation prior's table (``model.shift_loc`` ...)."""
    def get(self) -> nn.Parameter:
        if self.shifts is None or name not in self.shifts.tables():
            raise AttributeError(name)  # e.g. target_logit of an iVAE
        return getattr(self.shifts, name)
    return property(get, doc=f"The ``{name}`` table of the perturbation prior.")


for _name in SparseShifts.initial:
    setattr(SparseShiftVAE, _name, _table(_name))
del _name


def _tables_saved_before_shift_priors(module, state_dict, prefix, *args) -> None:
    """Load files written when the tables were the model's own parameters (``shift_loc``
    instead of ``shifts.shift_loc``); tables the model's prior does not have are dropped."""
    kept = module.perturbation_parameters()
    for name in SparseShifts.initial:
        value = state_dict.pop(prefix + name, None)
        if value is not None and name in kept:
            state_dict.setdefault(f"{prefix}shifts.{name}", value)


#: sparsity -> perturbation prior (None: no perturbation prior, the plain VAE)
SHIFT_PRIORS = {
    "vae": None,
    "ivae": lambda p, k, scale, weight: DenseShifts(p, k, scale),
    "svae": lambda p, k, scale, weight: SparseShifts(p, k, scale, "l0", weight),
    "svae+": lambda p, k, scale, weight: SparseShifts(p, k, scale, "beta", weight),
}


def target_probabilities(model: SparseShiftVAE) -> pd.DataFrame:
    r"""Posterior mean probability that each perturbation targets each latent.

    Returns
    -------
    DataFrame, (n_perturbations, n_latent)
        Index: perturbation names; columns ``z0 .. z{K-1}``. For sVAE / sVAE+ the guide's
        mean of :math:`\pi_{pk}`; for iVAE all ones (every latent is a target).
    """
    if getattr(model, "sparsity", None) in (None, "vae"):
        raise ValueError("target_probabilities needs a SparseShiftVAE with sparsity 'ivae', "
                         "'svae' or 'svae+'")
    if model.has_targets:
        with torch.no_grad():
            probabilities = model.target_posterior().mean.cpu().numpy()
    else:
        probabilities = np.ones((model.schema.n_perturbations, model.n_latent))
    return pd.DataFrame(probabilities, index=list(model.schema.perturbations),
                        columns=[f"z{k}" for k in range(model.n_latent)])
