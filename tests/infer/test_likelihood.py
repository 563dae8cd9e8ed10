r"""Importance-weighted ELBO on a linear-Gaussian model whose marginal likelihood is closed-form.

Model (per cell): :math:`z \sim N(0, I_K)`, :math:`x \mid z \sim N(Wz + b, \sigma^2 I_G)`, so
:math:`x \sim N(b, WW^\top + \sigma^2 I)` and the posterior is Gaussian with
:math:`\Sigma = (I + W^\top W / \sigma^2)^{-1}`, :math:`\mu = \Sigma W^\top (x - b) / \sigma^2`.
"""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn

from pyro_causalcell.data import CellBatch, CellData, CellSchema, DenseCounts
from pyro_causalcell.infer.likelihood import (
    importance_weighted_elbo,
    mean_importance_weighted_elbo,
)

pytestmark = pytest.mark.usefixtures("seeded")

N_LATENT, N_GENES, NOISE = 2, 5, 0.5


class LinearGaussian(nn.Module):
    """Linear-Gaussian model following the model protocol, with a Gaussian guide.

    The guide's mean is ``mean_scale`` times the exact posterior mean and its standard deviation
    ``std_scale`` times the exact one; (1, 1) is the exact posterior. Options add a global site
    ``"offset"`` (point-mass guide), an observed ``"domain"`` with a uniform prior over
    ``n_domains`` categories, and an auxiliary guide site absent from the model.
    """

    def __init__(self, mean_scale: float = 1.0, std_scale: float = 1.0, beta: float = 1.0,
                 global_offset: float | None = None, n_domains: int | None = None,
                 auxiliary: bool = False):
        super().__init__()
        generator = torch.Generator().manual_seed(3)
        self.weight = nn.Parameter(torch.randn(N_GENES, N_LATENT, generator=generator))
        self.bias = nn.Parameter(torch.randn(N_GENES, generator=generator))
        self.mean_scale, self.std_scale, self.beta = mean_scale, std_scale, beta
        self.global_offset = global_offset
        self.n_domains, self.auxiliary = n_domains, auxiliary

    def posterior(self):
        precision = torch.eye(N_LATENT) + self.weight.T @ self.weight / NOISE ** 2
        covariance = torch.linalg.inv(precision)
        return covariance, covariance @ self.weight.T / NOISE ** 2

    def model(self, batch: CellBatch):
        pyro.module("linear_gaussian", self)
        offset = 0.0
        if self.global_offset is not None:
            offset = pyro.sample("offset", dist.Normal(0.0, 1.0))
        with pyro.plate("cells", batch.n_cells, subsample=batch.index):
            if self.n_domains:
                pyro.sample("domain", dist.Categorical(logits=torch.zeros(self.n_domains)),
                            obs=batch.domain)
            with poutine.scale(scale=self.beta):
                z = pyro.sample("z", dist.Normal(torch.zeros(N_LATENT), 1.0).to_event(1))
            mean = z @ self.weight.T + self.bias + offset
            pyro.deterministic("expression", mean, event_dim=1)
            pyro.sample("counts", dist.Normal(mean, NOISE).to_event(1), obs=batch.counts)

    def guide(self, batch: CellBatch):
        pyro.module("linear_gaussian", self)
        offset = 0.0
        if self.global_offset is not None:
            offset = pyro.sample("offset", dist.Delta(torch.tensor(self.global_offset)))
        covariance, gain = self.posterior()
        with pyro.plate("cells", batch.n_cells, subsample=batch.index):
            loc = self.mean_scale * (batch.counts - self.bias - offset) @ gain.T
            scale_tril = self.std_scale * torch.linalg.cholesky(covariance)
            with poutine.scale(scale=self.beta):
                pyro.sample("z", dist.MultivariateNormal(loc, scale_tril=scale_tril))
            if self.auxiliary:
                pyro.sample("aux", dist.Normal(0.0, 1.0))


def exact_log_likelihood(model: LinearGaussian, x: torch.Tensor, offset: float = 0.0):
    covariance = model.weight @ model.weight.T + NOISE ** 2 * torch.eye(N_GENES)
    return dist.MultivariateNormal(model.bias + offset, covariance).log_prob(x).detach().numpy()


def exact_elbo(model: LinearGaussian, x: torch.Tensor) -> np.ndarray:
    """Closed-form E_q[log p(x, z) - log q(z | x)] for the guide."""
    with torch.no_grad():
        covariance, gain = model.posterior()
        loc = model.mean_scale * (x - model.bias) @ gain.T            # (n, K)
        guide_cov = model.std_scale ** 2 * covariance                  # (K, K)
        w = model.weight
        residual = x - model.bias - loc @ w.T
        expected_sq = (residual ** 2).sum(1) + torch.trace(w @ guide_cov @ w.T)
        log_lik = -0.5 * expected_sq / NOISE ** 2 - N_GENES * math.log(NOISE) \
            - 0.5 * N_GENES * math.log(2 * math.pi)
        log_prior = -0.5 * ((loc ** 2).sum(1) + torch.trace(guide_cov)) \
            - 0.5 * N_LATENT * math.log(2 * math.pi)
        entropy = 0.5 * torch.logdet(2 * math.pi * math.e * guide_cov)
        return (log_lik + log_prior + entropy).numpy()


def make_data(n_cells: int = 400, offset: float = 0.0, seed: int = 2024) -> CellData:
    """Cells simulated from the model.

    The seed differs from the estimator seeds used below: the same torch stream would make the
    guide's draws reuse the true latents' noise.
    """
    model = LinearGaussian()
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        z = torch.randn(n_cells, N_LATENT, generator=generator)
        x = z @ model.weight.T + model.bias + offset \
            + NOISE * torch.randn(n_cells, N_GENES, generator=generator)
    return CellData(counts=DenseCounts(x.float()), library=torch.ones(n_cells),
                    schema=CellSchema(genes=tuple(f"g{i}" for i in range(N_GENES))),
                    obs_names=[f"c{i}" for i in range(n_cells)])


def all_counts(data: CellData) -> torch.Tensor:
    return torch.as_tensor(data.dense_counts())


# ---------------------------------------------------------------------- closed forms
def test_exact_posterior_guide_gives_the_exact_log_likelihood_for_every_k():
    # every importance weight equals p(x): a check of the site bookkeeping, free of MC error
    data = make_data(60)
    model = LinearGaussian()
    exact = exact_log_likelihood(model, all_counts(data))
    for k in (1, 7):
        estimate = importance_weighted_elbo(model, data, n_samples=k, batch_size=16)
        assert estimate.shape == (60,) and estimate.dtype == np.float64
        np.testing.assert_allclose(estimate, exact, atol=2e-4)


def test_iwelbo_increases_with_k_towards_the_exact_log_likelihood():
    data = make_data(300)
    model = LinearGaussian(mean_scale=0.6, std_scale=2.0)  # a poor guide
    exact = float(exact_log_likelihood(model, all_counts(data)).mean())
    elbo = float(exact_elbo(model, all_counts(data)).mean())
    means = [mean_importance_weighted_elbo(model, data, k, batch_size=100, seed=1)
             for k in (1, 4, 16, 64, 256)]
    assert elbo < exact - 3.0                      # the guide is poor enough to see a gap
    assert means == sorted(means)                  # increasing in K
    assert all(m < exact + 0.02 for m in means)    # a lower bound (up to MC error)
    assert exact - means[-1] < 0.1
    # K = 1 is the ELBO in expectation (300 cells: standard error ~ 0.15 nats)
    assert means[0] == pytest.approx(elbo, abs=0.5)


def test_k1_matches_the_closed_form_elbo_averaged_over_draws():
    data = make_data(500)
    model = LinearGaussian(mean_scale=0.5, std_scale=1.5)
    draws = np.stack([importance_weighted_elbo(model, data, 1, seed=s) for s in range(20)])
    # the per-cell estimates are independent: compare within 4 standard errors
    error = abs(draws.mean() - exact_elbo(model, all_counts(data)).mean())
    standard_error = (draws - draws.mean(0)).std() / np.sqrt(draws.size)
    assert error < 4 * standard_error < 0.2


# ---------------------------------------------------------------------- bookkeeping
def test_scale_factors_are_ignored_and_the_model_is_left_as_it_was():
    data = make_data(40)
    plain = LinearGaussian(mean_scale=0.8, std_scale=1.3)
    scaled = LinearGaussian(mean_scale=0.8, std_scale=1.3, beta=5.0)  # a beta-VAE-like weight
    scaled.train()
    a = importance_weighted_elbo(plain, data, 20, batch_size=8, seed=3)
    b = importance_weighted_elbo(scaled, data, 20, batch_size=8, seed=3)
    np.testing.assert_allclose(a, b, rtol=1e-6)
    assert scaled.training and all(p.grad is None for p in scaled.parameters())


def test_seed_reproduces_and_restores_the_global_rng():
    data = make_data(30)
    model = LinearGaussian(mean_scale=0.5)
    torch.manual_seed(11)
    expected_next = torch.rand(1)
    torch.manual_seed(11)
    first = importance_weighted_elbo(model, data, 5, seed=4)
    assert torch.rand(1) == expected_next
    np.testing.assert_array_equal(first, importance_weighted_elbo(model, data, 5, seed=4))


def test_indices_select_cells_in_order_and_particles_per_pass_agrees():
    data = make_data(50)
    model = LinearGaussian()  # exact guide: deterministic answers
    exact = exact_log_likelihood(model, all_counts(data))
    indices = np.array([40, 3, 17, 3])
    estimate = importance_weighted_elbo(model, data, 6, indices=indices, batch_size=3,
                                        particles_per_pass=4)
    np.testing.assert_allclose(estimate, exact[indices], atol=2e-4)


def test_global_sites_are_held_at_the_guide_value_and_not_scored():
    offset = 1.5
    data = make_data(40, offset=offset)
    model = LinearGaussian(global_offset=offset)
    # exact per-cell guide given the offset: the estimate is log p(x | offset), with no
    # contribution of the offset's own prior N(0, 1) or of its point-mass guide
    estimate = importance_weighted_elbo(model, data, 3)
    np.testing.assert_allclose(estimate, exact_log_likelihood(model, all_counts(data), offset),
                               atol=2e-4)


def test_covariate_sites_are_conditioned_on_unless_asked():
    data = make_data(20)
    data.domain = torch.arange(20) % 2

    model = LinearGaussian(n_domains=4)
    exact = exact_log_likelihood(model, all_counts(data))
    np.testing.assert_allclose(importance_weighted_elbo(model, data, 2), exact, atol=2e-4)
    np.testing.assert_allclose(importance_weighted_elbo(model, data, 2, exclude_sites=()),
                               exact - math.log(4), atol=2e-4)


# ---------------------------------------------------------------------- errors
def test_bad_arguments_raise():
    data = make_data(10)
    model = LinearGaussian()
    with pytest.raises(ValueError, match="n_samples"):
        importance_weighted_elbo(model, data, 0)
    with pytest.raises(ValueError, match="batch_size"):
        importance_weighted_elbo(model, data, 2, batch_size=0)
    with pytest.raises(ValueError, match="indices"):
        importance_weighted_elbo(model, data, 2, indices=[0, 10])
    with pytest.raises(ValueError, match="CellData"):
        importance_weighted_elbo(model, all_counts(data), 2)

    class NoPlate(nn.Module):
        def model(self, batch):
            pyro.sample("counts", dist.Normal(0.0, 1.0).expand([len(batch), N_GENES])
                        .to_event(2), obs=batch.counts)

        def guide(self, batch):
            pass

    with pytest.raises(ValueError, match="cells"):
        importance_weighted_elbo(NoPlate(), data, 2)

    with pytest.raises(ValueError, match="auxiliary"):
        importance_weighted_elbo(LinearGaussian(auxiliary=True), data, 2)


# ---------------------------------------------------------------------- a package model
def test_runs_on_the_package_vae_with_domains_and_beta():
    from pyro_causalcell import VAE
    from pyro_causalcell.simulate import cell_types

    adata = cell_types(n_cells=60, n_genes=15, n_cell_types=3, n_batches=3, seed=5)
    data = CellData.from_anndata(adata, domain_key="batch")
    torch.manual_seed(0)
    vae = VAE(data.schema, n_latent=3, n_hidden=16, beta=4.0)
    conditional = importance_weighted_elbo(vae, data, 8, batch_size=25, seed=0)
    joint = importance_weighted_elbo(vae, data, 8, batch_size=25, seed=0, exclude_sites=())
    assert conditional.shape == (60,) and np.isfinite(conditional).all()
    assert (conditional < 0).all()
    # the observed domain's uniform prior is the only difference
    np.testing.assert_allclose(joint, conditional - math.log(3), atol=1e-4)
