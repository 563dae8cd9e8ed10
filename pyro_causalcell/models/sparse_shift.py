r"""Sparse mechanism shift VAEs: VAE, iVAE, sVAE and sVAE+ (Lopez et al., CLeaR 2023).

Latents :math:`z \in \mathbb{R}^K` of a control cell follow :math:`\mathcal{N}(0, I)`.
Perturbation :math:`p` is a stochastic intervention on its targets
:math:`m_p \in \{0,1\}^K`: for :math:`k` with :math:`m_{pk} = 1`,
:math:`z_k \sim \mathcal{N}(\delta_{pk}, 1)`; several perturbations in one cell add their shifts.
The decoder sees :math:`z` only, so a perturbation can act on expression only through its
targets.

``sparsity`` chooses the model:

- ``"vae"``: no perturbation prior (the baseline);
- ``"ivae"``: every latent is a target (dense learned shifts);
- ``"svae"``: masks with a flat prior and an L0-style penalty
  :math:`\lambda \sum_{pk} q(m_{pk}=1)` on the expected number of targets;
- ``"svae+"``: mask probabilities :math:`\pi_{pk} \sim \mathrm{Beta}(1, \lambda)`, integrated
  out exactly, so :math:`m_{pk} \sim \mathrm{Bernoulli}(1/(1+\lambda))`.

Shifts :math:`\delta_{pk}` and masks :math:`m_{pk}` are global sites in
``pyro.plate("perturbations", P)`` with a Gaussian and a relaxed-Bernoulli straight-through
guide, so a fit gives a posterior over targets.
"""

from __future__ import annotations

import uuid

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from ..data import CellBatch, CellSchema
from ..handlers import StochasticInterventionMessenger
from .components import observe_perturbation
from .vae import VAE

SPARSITY = ("vae", "ivae", "svae", "svae+")


class SparseShiftVAE(VAE):
    """VAE whose perturbations are sparse stochastic interventions on the latents.

    Parameters
    ----------
    schema : CellSchema
        Must have perturbations (``perturbation_key``) unless ``sparsity="vae"``.
    n_latent, n_hidden, n_layers, beta, likelihood, dispersion, use_domain, dropout
        As in :class:`~pyro_causalcell.models.VAE`.
    sparsity : {"vae", "ivae", "svae", "svae+"}
    sparsity_weight : float
        :math:`\\lambda`: penalty weight (sVAE) or Beta(1, lambda) prior (sVAE+).
    mask_temperature : float
        Temperature of the relaxed Bernoulli masks.
    shift_prior_scale : float
        Standard deviation of the Normal prior on shifts.

    Notes
    -----
    Sites: global ``"shift"`` and ``"mask"`` (``(P, K)``, in the ``"perturbations"`` plate);
    per cell ``"domain"`` (if any), ``"perturbation"`` (observed multi-hot), ``"z"``,
    ``"expression"``, ``"counts"``.
    """

    def __init__(self, schema: CellSchema, n_latent: int = 15, n_hidden: int = 128,
                 n_layers: int = 2, sparsity: str = "svae+", sparsity_weight: float = 1.0,
                 mask_temperature: float = 0.5, shift_prior_scale: float = 10.0,
                 beta: float = 1.0, likelihood: str = "nb", dispersion: str = "gene",
                 use_domain: bool = True, dropout: float = 0.0):
        if sparsity not in SPARSITY:
            raise ValueError(f"sparsity={sparsity!r}; choose one of {SPARSITY}")
        if sparsity != "vae" and schema.n_perturbations == 0:
            raise ValueError(f"sparsity={sparsity!r} needs perturbations: build the data with "
                             "CellData.from_anndata(..., perturbation_key=..., control=...)")
        if sparsity_weight < 0 or mask_temperature <= 0 or shift_prior_scale <= 0:
            raise ValueError("sparsity_weight must be >= 0, mask_temperature and "
                             "shift_prior_scale > 0")
        super().__init__(schema, n_latent=n_latent, n_hidden=n_hidden, n_layers=n_layers,
                         beta=beta, likelihood=likelihood, dispersion=dispersion,
                         use_domain=use_domain, dropout=dropout)
        self.init_args.update(sparsity=sparsity, sparsity_weight=sparsity_weight,
                              mask_temperature=mask_temperature,
                              shift_prior_scale=shift_prior_scale)
        self.sparsity = sparsity
        self.sparsity_weight = sparsity_weight
        self.mask_temperature = mask_temperature
        self.shift_prior_scale = shift_prior_scale
        shape = (schema.n_perturbations, n_latent)
        self.shift_loc = nn.Parameter(torch.zeros(shape))
        self.shift_raw_scale = nn.Parameter(torch.full(shape, -3.0))
        self.mask_logits = nn.Parameter(torch.zeros(shape))
        self.pyro_name = f"sparse_shift_{uuid.uuid4().hex[:8]}"

    @property
    def has_masks(self) -> bool:
        return self.sparsity in ("svae", "svae+")

    def _mask_prior_probability(self) -> float:
        return 1.0 / (1.0 + self.sparsity_weight) if self.sparsity == "svae+" else 0.5

    def model_globals(self, batch: CellBatch) -> dict:
        if self.sparsity == "vae":
            return {}
        zeros = self.shift_loc.new_zeros(self.n_latent)
        with pyro.plate("perturbations", self.schema.n_perturbations):
            shift = pyro.sample("shift", dist.Normal(zeros, self.shift_prior_scale).to_event(1))
            if self.has_masks:
                prior = torch.full_like(zeros, self._mask_prior_probability())
                mask = pyro.sample("mask", dist.RelaxedBernoulliStraightThrough(
                    torch.tensor(self.mask_temperature), probs=prior).to_event(1))
            else:
                mask = torch.ones_like(shift)
        if self.sparsity == "svae":
            pyro.factor("mask_sparsity",
                        -self.sparsity_weight * torch.sigmoid(self.mask_logits).sum())
        return {"shift": shift, "mask": mask}

    def guide_globals(self, batch: CellBatch) -> None:
        if self.sparsity == "vae":
            return
        with pyro.plate("perturbations", self.schema.n_perturbations):
            scale = F.softplus(self.shift_raw_scale) + 1e-4
            pyro.sample("shift", dist.Normal(self.shift_loc, scale).to_event(1))
            if self.has_masks:
                pyro.sample("mask", dist.RelaxedBernoulliStraightThrough(
                    torch.tensor(self.mask_temperature), logits=self.mask_logits).to_event(1))

    def latent_mechanisms(self, batch: CellBatch, globals_: dict):
        """Perturbed cells' targets follow ``Normal(sum of their shifts, 1)``."""
        if self.sparsity == "vae":
            return super().latent_mechanisms(batch, globals_)
        perturbation = observe_perturbation(batch)  # (cells, P), intervenable
        mask, shift = globals_["mask"], globals_["shift"]
        cell_shift = perturbation @ (mask * shift)  # (cells, K)
        # a latent is a target of the cell when it is a target of any of its perturbations
        untouched = 1.0 - perturbation.unsqueeze(-1) * mask  # (cells, P, K)
        cell_mask = 1.0 - untouched.prod(-2)
        return StochasticInterventionMessenger("z", dist.Normal(cell_shift, 1.0).to_event(1),
                                               cell_mask)


def target_probabilities(model: SparseShiftVAE) -> pd.DataFrame:
    """Posterior probability that each perturbation targets each latent.

    Returns
    -------
    DataFrame, (n_perturbations, n_latent)
        Index: perturbation names; columns ``z0 .. z{K-1}``. For sVAE / sVAE+ the guide's
        :math:`q(m_{pk} = 1)`; for iVAE all ones (every latent is a target).
    """
    if getattr(model, "sparsity", None) in (None, "vae"):
        raise ValueError("target_probabilities needs a SparseShiftVAE with sparsity 'ivae', "
                         "'svae' or 'svae+'")
    if model.has_masks:
        probabilities = torch.sigmoid(model.mask_logits.detach()).cpu().numpy()
    else:
        probabilities = np.ones(tuple(model.mask_logits.shape))
    return pd.DataFrame(probabilities, index=list(model.schema.perturbations),
                        columns=[f"z{k}" for k in range(model.n_latent)])
