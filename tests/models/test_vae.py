"""The VAE as a Pyro program: site names, plates, subsample scaling, interventions, beta, params."""

from __future__ import annotations

import math

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO, TraceMeanField_ELBO

from pyro_causalcell import VAE, CellData
from pyro_causalcell.simulate import cell_types

pytestmark = pytest.mark.usefixtures("seeded")

N_LATENT = 3


@pytest.fixture(scope="module")
def sim_adata():
    return cell_types(n_cells=80, n_genes=20, n_cell_types=3, n_batches=3, seed=11)


@pytest.fixture(scope="module")
def data(sim_adata) -> CellData:
    return CellData.from_anndata(sim_adata, domain_key="batch")


def new_vae(schema, seed: int = 0, **kwargs) -> VAE:
    torch.manual_seed(seed)
    kwargs.setdefault("n_hidden", 16)
    return VAE(schema, n_latent=N_LATENT, **kwargs)


def traces(model: VAE, batch, model_fn=None):
    """Guide trace and the model trace replayed against it (log-probs computed)."""
    guide_trace = poutine.trace(model.guide).get_trace(batch)
    model_trace = poutine.trace(poutine.replay(model_fn or model.model,
                                               trace=guide_trace)).get_trace(batch)
    guide_trace.compute_log_prob()
    model_trace.compute_log_prob()
    return guide_trace, model_trace


def mixed_batch(data: CellData, size: int = 12):
    """The first ``size`` cells, which include cells of every domain."""
    batch = data.batch(torch.arange(size))
    assert set(batch.domain.tolist()) == set(range(data.schema.n_domains))
    return batch


# ---------------------------------------------------------------------- sites and plates
def test_model_sites_follow_the_protocol(data):
    model = new_vae(data.schema)
    batch = mixed_batch(data)
    guide_trace, trace = traces(model, batch)
    sample_sites = [name for name, site in trace.nodes.items() if site["type"] == "sample"]
    assert sample_sites == ["cells", "domain", "z", "expression", "counts"]

    cells = trace.nodes["cells"]
    torch.testing.assert_close(cells["value"], batch.index)
    for name in ("domain", "z", "expression", "counts"):
        (frame,) = trace.nodes[name]["cond_indep_stack"]
        assert frame.name == "cells" and frame.dim == -1
        assert frame.full_size == data.n_cells and frame.size == len(batch)

    domain = trace.nodes["domain"]
    assert domain["is_observed"] and isinstance(domain["fn"], dist.Categorical)
    assert torch.equal(domain["value"], batch.domain)

    z = trace.nodes["z"]
    assert not z["is_observed"]
    assert z["value"].shape == (len(batch), N_LATENT)
    assert z["fn"].event_shape == (N_LATENT,)
    assert torch.equal(z["value"], guide_trace.nodes["z"]["value"])  # replayed from the guide

    expression = trace.nodes["expression"]
    assert expression["infer"].get("_deterministic") is True
    assert expression["value"].shape == (len(batch), data.schema.n_genes)
    assert (expression["value"] > 0).all()
    torch.testing.assert_close(expression["value"].sum(-1), batch.library, rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(trace.nodes["_RETURN"]["value"], expression["value"])

    counts = trace.nodes["counts"]
    assert counts["is_observed"] and torch.equal(counts["value"], batch.counts)
    assert counts["fn"].event_shape == (data.schema.n_genes,)
    assert counts["log_prob"].shape == (len(batch),)


def test_guide_has_only_the_latent_site(data):
    model = new_vae(data.schema)
    batch = mixed_batch(data)
    guide_trace = poutine.trace(model.guide).get_trace(batch)
    sample_sites = [name for name, site in guide_trace.nodes.items() if site["type"] == "sample"]
    assert sample_sites == ["cells", "z"]
    loc, scale = model.encoder(batch.counts, torch.eye(3)[batch.domain])
    torch.testing.assert_close(guide_trace.nodes["z"]["fn"].mean, loc)
    torch.testing.assert_close(guide_trace.nodes["z"]["fn"].stddev, scale)


def test_cells_plate_scales_subsampled_log_probs(data):
    beta = 2.5
    model = new_vae(data.schema, beta=beta)
    batch = data.batch(torch.tensor([3, 70, 11, 5, 42, 8, 19, 61]))  # 8 of 80 cells
    guide_trace, trace = traces(model, batch)
    factor = data.n_cells / len(batch)
    assert factor == 10.0
    for name in ("domain", "expression", "counts"):
        assert trace.nodes[name]["scale"] == pytest.approx(factor), name
    assert trace.nodes["z"]["scale"] == pytest.approx(beta * factor)
    assert guide_trace.nodes["z"]["scale"] == pytest.approx(beta * factor)
    # the recorded log-probs are the per-cell terms times the scale
    for name in ("domain", "z", "counts"):
        site = trace.nodes[name]
        unscaled = site["fn"].log_prob(site["value"])
        assert unscaled.shape == (len(batch),)
        torch.testing.assert_close(site["log_prob"], site["scale"] * unscaled)
    site = guide_trace.nodes["z"]
    torch.testing.assert_close(site["log_prob"],
                               beta * factor * site["fn"].log_prob(site["value"]))
    # a batch drawn from a smaller plate is scaled to that plate
    small = data.batch(torch.arange(8), n_cells=16)
    _, trace = traces(model, small)
    assert trace.nodes["counts"]["scale"] == pytest.approx(2.0)


# ---------------------------------------------------------------------- interventions
def test_do_domain_changes_expression_only_for_cells_of_other_domains(data):
    model = new_vae(data.schema)
    batch = mixed_batch(data)
    target = torch.zeros(len(batch), dtype=torch.long)
    guide_trace = poutine.trace(model.guide).get_trace(batch)  # a fixed z for both worlds
    factual = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(batch)
    intervened_model = pyro.do(model.model, data={"domain": target})
    intervened = poutine.trace(poutine.replay(intervened_model,
                                              trace=guide_trace)).get_trace(batch)

    assert torch.equal(intervened.nodes["domain"]["value"], batch.domain)  # observed value kept
    assert torch.equal(intervened.nodes["z"]["value"], factual.nodes["z"]["value"])

    before = factual.nodes["expression"]["value"]
    after = intervened.nodes["expression"]["value"]
    same = batch.domain == 0
    assert 0 < same.sum() < len(batch)
    torch.testing.assert_close(after[same], before[same], rtol=1e-6, atol=0)
    changed = (after[~same] - before[~same]).abs().amax(-1) / before[~same].amax(-1)
    assert (changed > 1e-4).all()
    # library size is not a descendant of domain: totals stay at the observed library
    torch.testing.assert_close(after.sum(-1), batch.library, rtol=1e-5, atol=1e-3)


def test_condition_on_z_gives_the_same_expression_as_the_decoder(data):
    model = new_vae(data.schema)
    batch = mixed_batch(data)
    z = torch.randn(len(batch), N_LATENT)
    trace = poutine.trace(poutine.condition(model.model, data={"z": z})).get_trace(batch)
    assert torch.equal(trace.nodes["z"]["value"], z)
    decoded = model.decoder(z, batch.library, torch.eye(3)[batch.domain])
    torch.testing.assert_close(trace.nodes["expression"]["value"], decoded["mean"])


# ---------------------------------------------------------------------- beta
def test_beta_scales_the_kl_term_of_the_elbo(data):
    vae = new_vae(data.schema, beta=1.0)
    beta_vae = new_vae(data.schema, seed=1, beta=4.0)
    beta_vae.load_state_dict(vae.state_dict())
    batch = data.batch(torch.arange(20))
    factor = data.n_cells / len(batch)

    # a fixed guide trace: both models are scored at the same z
    guide_trace = poutine.trace(vae.guide).get_trace(batch)
    z = guide_trace.nodes["z"]["value"].detach()
    loc, scale = vae.encoder(batch.counts, torch.eye(3)[batch.domain])
    log_q = torch.distributions.Normal(loc, scale).log_prob(z).sum()
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(z).sum()
    kl_sample = factor * (log_q - log_p).item()  # single-sample KL estimate, by hand

    def negative_elbo(model):
        guide = poutine.trace(poutine.replay(model.guide, trace=guide_trace)).get_trace(batch)
        assert torch.equal(guide.nodes["z"]["value"], z)
        joint = poutine.trace(poutine.replay(model.model, trace=guide)).get_trace(batch)
        return -(joint.log_prob_sum() - guide.log_prob_sum()).item()

    difference = negative_elbo(beta_vae) - negative_elbo(vae)
    assert difference == pytest.approx(3 * kl_sample, rel=1e-4)
    assert negative_elbo(vae) == pytest.approx(negative_elbo(new_vae(data.schema)), rel=1e-6)

    # through Trace_ELBO: with the same seed both models draw the same z
    losses = {}
    for name, model in (("vae", vae), ("beta_vae", beta_vae)):
        pyro.set_rng_seed(5)
        elbo = Trace_ELBO(max_plate_nesting=1)
        losses[name] = elbo.loss(model.model, model.guide, batch)
        pyro.set_rng_seed(5)
        losses[name + "_z"] = poutine.trace(model.guide).get_trace(batch).nodes["z"]["value"]
    assert torch.equal(losses["vae_z"], losses["beta_vae_z"])
    z = losses["vae_z"].detach()
    kl_sample = factor * (torch.distributions.Normal(loc, scale).log_prob(z).sum()
                          - torch.distributions.Normal(0.0, 1.0).log_prob(z).sum()).item()
    assert losses["beta_vae"] - losses["vae"] == pytest.approx(3 * kl_sample, rel=1e-3)

    # the analytic KL of diagonal Gaussians, through TraceMeanField_ELBO
    kl = (torch.log(1 / scale) + (scale ** 2 + loc ** 2 - 1) / 2).sum().item() * factor
    mean_field = {}
    for name, model in (("vae", vae), ("beta_vae", beta_vae)):
        pyro.set_rng_seed(6)  # the same z for the reconstruction term of both
        mean_field[name] = TraceMeanField_ELBO(max_plate_nesting=1).loss(model.model,
                                                                         model.guide, batch)
    assert mean_field["beta_vae"] - mean_field["vae"] == pytest.approx(3 * kl, rel=1e-4)
    assert kl > 0


@pytest.mark.parametrize("beta", [0.0, -1.0, float("nan"), float("inf")])
def test_bad_beta_is_refused(data, beta):
    with pytest.raises(ValueError, match="beta must be a finite number > 0"):
        VAE(data.schema, beta=beta)


def test_bad_likelihood_and_dispersion_are_refused(sim_adata, data):
    with pytest.raises(ValueError, match="likelihood='lognormal'"):
        VAE(data.schema, likelihood="lognormal")
    no_domains = CellData.from_anndata(sim_adata)
    with pytest.raises(ValueError, match="dispersion='gene-domain' needs data with domains"):
        VAE(no_domains.schema, dispersion="gene-domain")


# ---------------------------------------------------------------------- domains
def test_schema_without_domains_has_no_domain_site(sim_adata):
    data = CellData.from_anndata(sim_adata)
    model = new_vae(data.schema)
    assert model.n_domains == 0 and model.n_covariates == 0
    batch = data.batch(torch.arange(10))
    assert batch.domain is None
    guide_trace, trace = traces(model, batch)
    assert "domain" not in trace.nodes
    assert [n for n, s in trace.nodes.items() if s["type"] == "sample"] == [
        "cells", "z", "expression", "counts"]
    assert math.isfinite(Trace_ELBO().loss(model.model, model.guide, batch))
    # the first encoder layer sees only the genes
    assert model.encoder.net.layers[0].in_features == data.schema.n_genes


def test_use_domain_false_gives_networks_no_covariates(data):
    model = new_vae(data.schema, use_domain=False)
    assert model.n_covariates == 0
    assert model.encoder.net.n_covariates == 0 and model.decoder.net.n_covariates == 0
    assert model.encoder.net.layers[0].in_features == data.schema.n_genes
    assert model.decoder.net.layers[0].in_features == N_LATENT
    with_domain = new_vae(data.schema)
    assert with_domain.encoder.net.layers[0].in_features == data.schema.n_genes + 3

    batch = mixed_batch(data)
    guide_trace, trace = traces(model, batch)
    assert trace.nodes["domain"]["is_observed"]  # still observed: the schema has domains
    # the decoder ignores domain, so intervening on it changes nothing downstream
    target = torch.zeros(len(batch), dtype=torch.long)
    intervened = poutine.trace(poutine.replay(pyro.do(model.model, data={"domain": target}),
                                              trace=guide_trace)).get_trace(batch)
    assert torch.equal(intervened.nodes["expression"]["value"],
                       trace.nodes["expression"]["value"])


# ---------------------------------------------------------------------- parameters
def test_all_parameters_are_registered_under_the_unique_pyro_name(data):
    first, second = new_vae(data.schema), new_vae(data.schema)
    assert first.pyro_name != second.pyro_name
    batch = mixed_batch(data)
    store = pyro.get_param_store()
    for model in (first, second):
        model.model(batch)
        model.guide(batch)
    names = set(store.keys())
    for model in (first, second):
        expected = {f"{model.pyro_name}$$${n}" for n, _ in model.named_parameters()}
        assert expected <= names
        for full_name in expected:
            local = full_name.split("$$$", 1)[1]
            assert store[full_name] is dict(model.named_parameters())[local]
    assert len(names) == 2 * len(list(first.parameters()))  # nothing shared, nothing free-floating
    # a step of plain SVI on one model leaves the other untouched
    before = {k: v.detach().clone() for k, v in second.state_dict().items()}
    svi = pyro.infer.SVI(first.model, first.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    svi.step(batch)
    for key, value in second.state_dict().items():
        assert torch.equal(value, before[key]), key


# ---------------------------------------------------------------------- named covariates
def test_named_covariates_are_observed_sites_that_reach_the_decoder(make_adata):
    adata = make_adata(24)
    adata.obs["donor"] = ["a", "b", "c"] * 8
    adata.obs["qc"] = np.linspace(0.0, 1.0, 24)
    data = CellData.from_anndata(adata, categorical_covariate_keys=["donor"],
                                 continuous_covariate_keys=["qc"])
    torch.manual_seed(0)
    model = VAE(data.schema, n_latent=2, n_hidden=8)
    assert model.encoder.net.layers[0].in_features == data.schema.n_genes + 3 + 1
    assert model.decoder.net.layers[0].in_features == 2 + 3 + 1
    assert VAE(data.schema, use_covariates=False).n_covariates == 0
    batch = data.batch(torch.arange(24))
    guide = poutine.trace(model.guide).get_trace(batch)
    trace = poutine.trace(poutine.replay(model.model, trace=guide)).get_trace(batch)
    for name in ("donor", "qc"):
        assert trace.nodes[name]["is_observed"], name
        assert torch.equal(trace.nodes[name]["value"], batch.covariates[name]), name
    moved = poutine.trace(poutine.replay(pyro.do(model.model, data={
        "donor": torch.zeros(24, dtype=torch.long)}), trace=guide)).get_trace(batch)
    changed = (moved.nodes["expression"]["value"] - trace.nodes["expression"]["value"]).abs()
    assert (changed.sum(1)[batch.covariates["donor"] == 0] == 0).all()
    assert (changed.sum(1)[batch.covariates["donor"] != 0] > 0).all()
