"""HSICVAE: a VAE whose latents are pushed towards independence of a nuisance."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from pyro import poutine

from pyro_causalcell import HSICVAE, VAE, CellData, fit, latent
from pyro_causalcell.metrics import batch_mixing, hsic
from pyro_causalcell.simulate import invariant_spurious


@pytest.fixture(scope="module")
def adata():
    adata = invariant_spurious(n_cells=1500, n_genes=100, seed=6)
    adata.obs["qc"] = np.random.default_rng(0).normal(size=adata.n_obs)
    return adata


def test_penalty_site_weight_and_nuisance(adata):
    data = CellData.from_anndata(adata, domain_key="domain", continuous_covariate_keys=["qc"])
    torch.manual_seed(0)
    model = HSICVAE(data.schema, n_latent=3, n_hidden=16, nuisance=["domain", "qc"])
    batch = data.batch(torch.arange(32))
    guide = poutine.trace(model.guide).get_trace(batch)
    trace = poutine.trace(poutine.replay(model.model, trace=guide)).get_trace(batch)
    assert "hsic" in trace.nodes and trace.nodes["hsic"]["fn"].log_prob(
        trace.nodes["hsic"]["value"]) <= 0
    off = HSICVAE(data.schema, n_latent=3, hsic_weight=0.0)
    trace = poutine.trace(poutine.replay(off.model, trace=guide)).get_trace(batch)
    assert "hsic" not in trace.nodes
    with pytest.raises(ValueError, match=r"nuisance=\['donor'\]: name covariates"):
        HSICVAE(data.schema, nuisance=["donor"])
    with pytest.raises(ValueError, match="hsic_weight must be >= 0"):
        HSICVAE(data.schema, hsic_weight=-1.0)


def test_latent_becomes_independent_of_the_batch_at_a_comparable_elbo(adata):
    data = CellData.from_anndata(adata, domain_key="domain")
    domains = adata.obs["domain"].astype(str).to_numpy()
    results = {}
    for name, make in [("vae", lambda: VAE(data.schema, n_latent=4, n_hidden=64)),
                       ("hsic", lambda: HSICVAE(data.schema, n_latent=4, n_hidden=64))]:
        torch.manual_seed(6)
        model = make()
        history = fit(model, data, max_epochs=80, lr=3e-3, progress=False, device="cpu",
                      seed=6)
        z = latent(model, data)
        results[name] = (hsic(z, domains), batch_mixing(z, domains),
                         history.validation_elbo[-1])
    (hsic_vae, mixing_vae, elbo_vae), (hsic_ours, mixing_ours, elbo_ours) = (
        results["vae"], results["hsic"])
    assert hsic_ours < 0.5 * hsic_vae, results
    assert mixing_ours > mixing_vae + 0.02, results
    assert elbo_ours > elbo_vae - 0.05 * abs(elbo_vae), results
