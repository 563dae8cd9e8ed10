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


def test_nuisance_latent_block_sites_shapes_and_errors(adata):
    data = CellData.from_anndata(adata, domain_key="domain")
    model = HSICVAE(data.schema, n_latent=3, n_hidden=16, nuisance=[], nuisance_latent=2)
    batch = data.batch(torch.arange(32))
    guide = poutine.trace(model.guide).get_trace(batch)
    trace = poutine.trace(poutine.replay(model.model, trace=guide)).get_trace(batch)
    assert trace.nodes["z"]["value"].shape == (32, 3)
    assert trace.nodes["z_nuisance"]["value"].shape == (32, 2)
    assert trace.nodes["z_nuisance"]["value"] is guide.nodes["z_nuisance"]["value"]
    assert "hsic" in trace.nodes
    assert latent(model, data, site="z_nuisance").shape == (adata.n_obs, 2)
    with pytest.raises(ValueError, match="nuisance_latent must be an int >= 0"):
        HSICVAE(data.schema, nuisance_latent=-1)
    with pytest.raises(ValueError, match=r"nuisance=\[\]: .*nuisance_latent > 0"):
        HSICVAE(data.schema, nuisance=[])


def nuisance_scores(adata, seed: int, max_epochs: int = 80, hsic_weight: float = 1000.0) -> dict:
    """A VAE and HSICVAEs with a nuisance block (HSIC off and on), fitted from ``seed``: HSIC of
    z / u with the batch, batch mixing of z, HSIC between z and u, and validation ELBOs."""
    # no domain in the decoder: the batch effect must go through a latent
    data = CellData.from_anndata(adata, domain_key="domain")
    domains = adata.obs["domain"].astype(str).to_numpy()
    fitted = {}
    for name, make in [
            ("vae", lambda: VAE(data.schema, n_latent=4, n_hidden=64, use_domain=False)),
            ("off", lambda: HSICVAE(data.schema, n_latent=4, n_hidden=64, use_domain=False,
                                    nuisance_latent=2, hsic_weight=0.0)),
            ("on", lambda: HSICVAE(data.schema, n_latent=4, n_hidden=64, use_domain=False,
                                   nuisance_latent=2, hsic_weight=hsic_weight))]:
        torch.manual_seed(seed)
        model = make()
        history = fit(model, data, max_epochs=max_epochs, lr=3e-3, progress=False, device="cpu",
                      seed=seed)
        fitted[name] = (model, latent(model, data), history.validation_elbo[-1])
    z_vae, z_off, z_on = (fitted[n][1] for n in ("vae", "off", "on"))
    u_off = latent(fitted["off"][0], data, site="z_nuisance")
    u_on = latent(fitted["on"][0], data, site="z_nuisance")
    return dict(hsic=(hsic(z_vae, domains), hsic(z_on, domains), hsic(u_on, domains)),
                mixing=(batch_mixing(z_vae, domains), batch_mixing(z_on, domains)),
                z_u=(hsic(z_off, u_off), hsic(z_on, u_on)),
                elbo=tuple(fitted[n][2] for n in ("vae", "off", "on")))


def test_nuisance_latent_block_takes_the_batch_effect_off_z(adata):
    """With the HSIC weight at 3000 the nuisance block took the batch on every one of the
    training seeds 0-7 (seed 6 is the test's; the thresholds were chosen there) and 8-11, with
    margin: HSIC of z with the batch 0.02-0.08 of a VAE's, of u 28-200 times z's, batch mixing
    of z up by 0.46-0.54, HSIC between z and u 0.03-0.33 of the unpenalised model's, validation
    ELBO within 1.5% of the VAE's. At the
    default weight (1000) and this budget of 80 epochs it failed these assertions on three of
    the eight (seeds 1, 3 and 7: z kept 40-52% of the VAE's HSIC with the batch; seed 3 also
    with 160 epochs)."""
    summary = nuisance_scores(adata, seed=6, hsic_weight=3000.0)
    print(f"nuisance block: {summary}")
    assert summary["hsic"][1] < 0.2 * summary["hsic"][0], summary
    assert summary["hsic"][2] > 10 * summary["hsic"][1], summary  # the batch went to u
    assert summary["mixing"][1] > summary["mixing"][0] + 0.3, summary
    assert summary["z_u"][1] < 0.5 * summary["z_u"][0], summary
    elbo_vae, _, elbo_on = summary["elbo"]
    assert elbo_on > elbo_vae - 0.05 * abs(elbo_vae), summary
