r"""Perturbation priors of the sparse-mechanism-shift family, as small objects.

Each holds the per-perturbation tables (rows: perturbations, columns: latents), samples the
global sites in ``pyro.plate("perturbations", P)`` and their guide, and gives the mechanism
of a perturbed cell's latents. :class:`~pyro_causalcell.models.SparseShiftVAE` picks one by
``sparsity``; a new perturbation prior is a new class of this shape.

- :class:`DenseShifts` (iVAE): every latent is a target, :math:`z \sim \mathcal{N}(a\,\delta, I)`;
- :class:`SparseShifts` (sVAE, sVAE+): latent :math:`k` is a target of :math:`p` with
  probability :math:`\pi_{pk}`, summed out exactly per cell
  (:func:`~pyro_causalcell.distributions.shift_mixture`); the targets' prior is a flat one with
  an L0-style penalty :math:`\lambda \sum \pi` (``"l0"``, sVAE) or
  :math:`\mathrm{Beta}(1, \lambda)` (``"beta"``, sVAE+).
"""

from __future__ import annotations

import math

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from torch import nn

from .. import sites
from ..distributions import shift_mixture, shift_mixture_log_prob
from .components import append_rows

__all__ = ["DenseShifts", "SparseShifts"]


class DenseShifts(nn.Module):
    """Learned shifts :math:`\\delta_p` with a ``Normal(0, shift_prior_scale)`` prior and a
    Normal guide; a perturbed cell's latents follow ``Normal(a @ delta, 1)``.

    Parameters
    ----------
    n_perturbations, n_latent : int
    shift_prior_scale : float
    """

    has_targets = False
    #: initial value of each table: shifts at 0 with a small guide scale
    initial = {"shift_loc": 0.0, "shift_raw_scale": -3.0}
    #: the most perturbations a training cell carries (set by ``prepare_fit``; None: unknown)
    max_active: int | None = None

    def __init__(self, n_perturbations: int, n_latent: int, shift_prior_scale: float = 10.0):
        super().__init__()
        self.n_latent, self.shift_prior_scale = n_latent, shift_prior_scale
        for name, fill in self.initial.items():
            setattr(self, name, nn.Parameter(torch.full((n_perturbations, n_latent), fill)))

    def tables(self) -> dict[str, nn.Parameter]:
        """The per-perturbation tables, each ``(n_perturbations, n_latent)``, by name."""
        return {name: getattr(self, name) for name in self.initial}

    def add(self, n_new: int) -> None:
        """Append ``n_new`` rows at the initial values; known rows are unchanged."""
        for name, fill in self.initial.items():
            setattr(self, name, append_rows(getattr(self, name), n_new, fill))

    def _shift_site(self) -> torch.Tensor:
        zeros = self.shift_loc.new_zeros(self.n_latent)
        return pyro.sample("shift", dist.Normal(zeros, self.shift_prior_scale).to_event(1))

    def model_globals(self) -> dict:
        """Sample the global sites; returns what :meth:`mechanism` needs."""
        with pyro.plate(sites.PERTURBATIONS, self.shift_loc.shape[0]):
            return {"shift": self._shift_site()}

    def guide_globals(self) -> None:
        with pyro.plate(sites.PERTURBATIONS, self.shift_loc.shape[0]):
            self._guide_sites()

    def _guide_sites(self) -> None:
        scale = F.softplus(self.shift_raw_scale) + 1e-4
        pyro.sample("shift", dist.Normal(self.shift_loc, scale).to_event(1))

    def mechanism(self, perturbation: torch.Tensor, globals_: dict) -> dist.Distribution:
        """Mechanism of the latents of cells with multi-hot ``perturbation`` ``(cells, P)``."""
        return dist.Normal(perturbation @ globals_["shift"], 1.0).to_event(1)


class SparseShifts(DenseShifts):
    """Shifts that hit each latent with a learned probability :math:`\\pi_{pk}` (Beta guide).

    Parameters
    ----------
    n_perturbations, n_latent : int
    shift_prior_scale : float
    penalty : {"l0", "beta"}
        sVAE's flat prior with the penalty :math:`\\lambda \\sum \\pi` (a ``pyro.factor`` site
        ``"target_sparsity"``), or sVAE+'s :math:`\\mathrm{Beta}(1, \\lambda)` prior.
    sparsity_weight : float
        :math:`\\lambda`.
    """

    has_targets = True
    #: target probabilities start at 1/2 with Beta concentration 10
    initial = {**DenseShifts.initial, "target_logit": 0.0,
               "target_log_concentration": math.log(10.0)}
    PENALTIES = ("l0", "beta")

    def __init__(self, n_perturbations: int, n_latent: int, shift_prior_scale: float = 10.0,
                 penalty: str = "beta", sparsity_weight: float = 50.0):
        if penalty not in self.PENALTIES:
            raise ValueError(f"penalty={penalty!r}; choose one of {self.PENALTIES}")
        super().__init__(n_perturbations, n_latent, shift_prior_scale)
        self.penalty, self.sparsity_weight = penalty, sparsity_weight

    def target_posterior(self) -> dist.Beta:
        r"""The guide's ``Beta`` over :math:`\pi`, batch shape ``(P, K)``."""
        mean = torch.sigmoid(self.target_logit).clamp(1e-4, 1 - 1e-4)
        concentration = self.target_log_concentration.exp()
        return dist.Beta(concentration * mean, concentration * (1 - mean))

    def model_globals(self) -> dict:
        zeros = self.shift_loc.new_zeros(self.n_latent)
        slab = self.sparsity_weight if self.penalty == "beta" else 1.0
        with pyro.plate(sites.PERTURBATIONS, self.shift_loc.shape[0]):
            shift = self._shift_site()
            probability = pyro.sample("target_probability", dist.Beta(
                torch.ones_like(zeros), torch.full_like(zeros, slab)).to_event(1))
        probability = probability.clamp(1e-6, 1 - 1e-6)
        if self.penalty == "l0":
            pyro.factor("target_sparsity", -self.sparsity_weight * probability.sum())
        return {"shift": shift, "probability": probability}

    def log_joint(self, z: torch.Tensor, perturbation: torch.Tensor, shift: torch.Tensor,
                  target_logit: torch.Tensor) -> torch.Tensor:
        """Log density of latents ``z`` given point values of the tables, plus the tables' log
        prior (the prior's density of :math:`\\pi`): the objective that
        :func:`~pyro_causalcell.infer.realign_latents` maximises, vectorised over leading batch
        dimensions (one per start of its search).

        Parameters
        ----------
        z : (..., cells, K) tensor
        perturbation : (cells, P) multi-hot tensor
            Control cells (all zeros) follow ``Normal(0, I)``.
        shift, target_logit : (..., P, K) tensors
            :math:`\\delta` and the logit of :math:`\\pi`.

        Returns
        -------
        (...) tensor
        """
        log_not_target = -F.softplus(target_logit)  # log(1 - pi)
        log_prior = dist.Normal(0.0, self.shift_prior_scale).log_prob(shift).sum((-2, -1))
        if self.penalty == "beta":  # Beta(1, lambda): log lambda + (lambda - 1) log(1 - pi)
            log_prior = log_prior + (math.log(self.sparsity_weight) + (
                self.sparsity_weight - 1.0) * log_not_target).sum((-2, -1))
        else:
            log_prior = log_prior - self.sparsity_weight * torch.sigmoid(target_logit).sum(
                (-2, -1))
        latents = shift_mixture_log_prob(z, perturbation, shift, target_logit).sum((-2, -1))
        return latents + log_prior

    def _guide_sites(self) -> None:
        super()._guide_sites()
        pyro.sample("target_probability", self.target_posterior().to_event(1))

    def mechanism(self, perturbation: torch.Tensor, globals_: dict) -> dist.Distribution:
        # in training, the bound noted by prepare_fit spares a host read of the batch's largest
        # combination; queries may ask for larger combinations than training had
        bound = self.max_active if self.training else None
        return shift_mixture(perturbation, globals_["shift"], globals_["probability"],
                             bound).to_event(1)
