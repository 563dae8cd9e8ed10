r"""The non-factorized prior of NF-inVAE: an unnormalised exponential family fitted by score
matching.

The invariant latents get the conditional density (Aliee et al., 2023, after Lu et al.'s
NF-iVAE)

.. math::
    \log \tilde p(z \mid u) = \langle z, \lambda_1(u) \rangle
        - \langle z^2, \operatorname{softplus}\lambda_2(u) \rangle
        + \langle T(z), \lambda_3(u) \rangle,

with :math:`T(z) = \tanh(\mathrm{MLP}(z))` a learned sufficient statistic that couples the
coordinates (the "non-factorized" part) and :math:`\lambda(u)` a network of the covariates. Its
normaliser is unknown, so the prior's parameters are not fitted by the ELBO but by
Hyvärinen's score matching on posterior samples,

.. math::
    J = \mathbb{E}_{q(z \mid x)}\Big[\sum_j \tfrac12 (\partial_j \log\tilde p)^2
        + \partial_j^2 \log \tilde p\Big],

which needs only derivatives in :math:`z` (the Hessian's diagonal is computed exactly, one
backward pass per latent dimension). The ELBO still uses :math:`\log\tilde p`: its gradient in
the encoder's and decoder's parameters is right because the normaliser depends on :math:`u`
and the prior's parameters only. Unlike the study's code, the quadratic coefficient is kept
negative and :math:`T` bounded, so the density always normalises.

In training the score-matching objective is an auxiliary objective of the engine
(:class:`~pyro_causalcell.infer.steps.Adversary`): its own loss and optimiser after each ELBO
step, its parameters left out of the ELBO's optimiser.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution, constraints
from torch import nn

from ..handlers.exogenous_noise import Noise, register_noise_family
from ..nn import MLP

__all__ = ["ExponentialFamilyPrior", "UnnormalizedDensity"]


class UnnormalizedDensity(TorchDistribution):
    """A density known up to its normaliser: ``log_prob`` only (no sampler).

    Parameters
    ----------
    prior : ExponentialFamilyPrior
    natural : (batch, n_natural) tensor
        The natural parameters :math:`\\lambda(u)` of each cell.
    """

    arg_constraints: dict = {}
    support = constraints.real_vector

    def __init__(self, prior: "ExponentialFamilyPrior", natural: torch.Tensor,
                 validate_args=None):
        self.prior, self.natural = prior, natural
        super().__init__(natural.shape[:-1], torch.Size([prior.n_latent]),
                         validate_args=validate_args)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """``(batch, n_latent)`` -> ``(batch,)`` unnormalised log density."""
        return self.prior.log_density(value, self.natural)

    def expand(self, batch_shape, _instance=None):
        natural = self.natural.expand(torch.Size(batch_shape) + self.natural.shape[-1:])
        return UnnormalizedDensity(self.prior, natural)

    def sample(self, sample_shape=torch.Size()):
        raise NotImplementedError(
            "the non-factorized prior is known only up to its normaliser and has no sampler: "
            "draw latents from the guide (pyro_causalcell.latent) rather than from the prior")


class ExponentialFamilyPrior(nn.Module):
    """:math:`\\tilde p(z \\mid u)`, an unnormalised conditional exponential family.

    Parameters
    ----------
    n_covariates : int
        Width of the covariate features :math:`u`.
    n_latent : int
    hidden : sequence of int
        Hidden layers of the networks :math:`T` and :math:`\\lambda`.
    n_statistics : int, optional
        Width of :math:`T(z)` (default ``2 * n_latent``, as the study).
    curvature_penalty : float
        Weight of the squared second derivatives added to the score-matching objective.
    """

    def __init__(self, n_covariates: int, n_latent: int, hidden: Sequence[int] = (64,),
                 n_statistics: int | None = None, curvature_penalty: float = 0.1):
        super().__init__()
        self.curvature_penalty = curvature_penalty
        if n_covariates < 1:
            raise ValueError("the non-factorized prior needs covariates (n_covariates >= 1)")
        self.n_latent = n_latent
        self.n_statistics = 2 * n_latent if n_statistics is None else n_statistics
        self.statistics = MLP(n_latent, self.n_statistics, hidden, activation=nn.Tanh)
        self.natural_parameters = MLP(n_covariates, 2 * n_latent + self.n_statistics, hidden)

    def forward(self, covariates: torch.Tensor, n_cells: int,
                like: torch.Tensor) -> UnnormalizedDensity:
        return UnnormalizedDensity(self, self.natural_parameters(covariates))

    def log_density(self, z: torch.Tensor, natural: torch.Tensor) -> torch.Tensor:
        """``(batch, n_latent)``, ``(batch, n_natural)`` -> ``(batch,)`` :math:`\\log\\tilde p`."""
        linear, quadratic, weights = natural.split(
            [self.n_latent, self.n_latent, self.n_statistics], -1)
        precision = F.softplus(quadratic) + 1e-3
        statistics = torch.tanh(self.statistics(z))
        return ((linear * z).sum(-1) - (precision * z.square()).sum(-1)
                + (weights * statistics).sum(-1))

    def score_matching_loss(self, z: torch.Tensor, covariates: torch.Tensor,
                            curvature_penalty: float | None = None) -> torch.Tensor:
        """Hyvärinen's objective, averaged over the ``(batch, n_latent)`` samples ``z``, plus
        ``curvature_penalty`` times the squared curvature (Kingma and LeCun's regulariser: a
        flexible energy can otherwise drive the objective to minus infinity with spikes at the
        samples)."""
        penalty = self.curvature_penalty if curvature_penalty is None else curvature_penalty
        z = z.detach().requires_grad_(True)
        with torch.enable_grad():
            log_density = self.log_density(z, self.natural_parameters(covariates))
            score = torch.autograd.grad(log_density.sum(), z, create_graph=True)[0]
            curvature = torch.stack([
                torch.autograd.grad(score[:, j].sum(), z, create_graph=True)[0][:, j]
                for j in range(self.n_latent)], -1)
        return (0.5 * score.square() + curvature
                + penalty * curvature.square()).sum(-1).mean()


def _abduct(fn: UnnormalizedDensity, value: torch.Tensor) -> Noise:
    return Noise(value, mechanism=fn.natural)


def _predict(fn: UnnormalizedDensity, noise: Noise) -> torch.Tensor:
    changed = ~torch.isclose(fn.natural, noise.mechanism, rtol=1e-5, atol=1e-6).all(-1)
    if changed.any():
        raise ValueError(
            f"the intervention changes the non-factorized prior of {int(changed.sum())} cells "
            "(their invariant covariates were intervened on). That prior has no exogenous-noise "
            "form, so such counterfactuals are undefined; interventions on the spurious "
            "covariates are fine, or use a factorized prior (prior='variance', 'mean' or "
            "'both').")
    return noise.epsilon


#: a cell keeps its latent value wherever its non-factorized prior is unchanged
register_noise_family(UnnormalizedDensity, _abduct, _predict)
