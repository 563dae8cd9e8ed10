"""InVAE: invariant and spurious blocks with covariate-conditioned priors, on the shared engines."""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine

from pyro_causalcell import CellData, InVAE, counterfactual, fit, latent, load, save
from pyro_causalcell.models.blocks import ConditionalNormalPrior, NormalPrior
from pyro_causalcell.models.energy_prior import ExponentialFamilyPrior
from pyro_causalcell.simulate import invariant_spurious


@pytest.fixture(scope="module")
def data() -> CellData:
    adata = invariant_spurious(n_cells=600, n_genes=60, seed=1)
    return CellData.from_anndata(adata, domain_key="domain", label_key="label")


def test_sites_and_default_covariates(data, replayed):
    torch.manual_seed(0)
    model = InVAE(data.schema, n_latent_inv=3, n_latent_spur=2, n_hidden=16)
    assert (model.invariant, model.spurious) == (["label"], ["domain"])
    guide, trace = replayed(model, data.batch(torch.arange(8)))
    assert trace.nodes["label"]["is_observed"] and trace.nodes["domain"]["is_observed"]
    assert trace.nodes["z_inv"]["value"].shape == (8, 3)
    assert trace.nodes["z_spur"]["value"].shape == (8, 2)
    assert set(guide.nodes) >= {"z_inv", "z_spur"} and "label" not in guide.nodes
    assert isinstance(model.inv.prior, ConditionalNormalPrior)
    assert model.inv.prior.mode == "both" and model.invariance_weight == 10.0
    assert "conditional_invariance" in trace.nodes and "total_correlation" not in trace.nodes
    assert model.adversaries() == []


def test_the_guide_does_not_need_the_label(data):
    """New cells of unknown type can be encoded: the encoder reads counts and the domain."""
    torch.manual_seed(0)
    model = InVAE(data.schema, n_latent_inv=3, n_hidden=16, encode_spurious=True)
    batch = data.batch(torch.arange(8))
    with_label = poutine.trace(model.guide).get_trace(batch)
    batch.label = None
    without = poutine.trace(model.guide).get_trace(batch)
    assert torch.equal(with_label.nodes["z_inv"]["fn"].base_dist.loc,
                       without.nodes["z_inv"]["fn"].base_dist.loc)


def test_prior_variants_and_the_empty_covariate_set(data, replayed):
    for mode in ("variance", "mean", "both"):
        assert InVAE(data.schema, prior=mode).inv.prior.mode == mode
    assert isinstance(InVAE(data.schema, prior="none").inv.prior, NormalPrior)
    no_label = InVAE(data.schema, invariant=[])
    assert isinstance(no_label.inv.prior, NormalPrior) and no_label.invariance_weight == 0.0
    nonfactorized = InVAE(data.schema, prior="nonfactorized")
    assert isinstance(nonfactorized.inv.prior, ExponentialFamilyPrior)
    assert nonfactorized.spur.prior.mode == "variance"
    (score_matching,) = nonfactorized.adversaries()
    assert score_matching.module is nonfactorized.inv.prior
    decoder_only = InVAE(data.schema, n_latent_inv=3, spurious_in_decoder=True, n_hidden=16)
    assert decoder_only.spur is None
    assert decoder_only.decoder.net.layers[0].in_features == 3 + data.schema.n_domains
    _, trace = replayed(decoder_only, data.batch(torch.arange(4)))
    assert "z_spur" not in trace.nodes


@pytest.mark.parametrize("kwargs, message", [
    (dict(invariant=["donor"]), r"covariates \['donor'\] are not carried by the data"),
    (dict(invariant=["label"], spurious=["label"]), r"\['label'\] cannot be both"),
    (dict(prior="flat"), "prior='flat'; choose one of"),
    (dict(tc_weight=-1.0), "tc_weight must be >= 0"),
    (dict(tc_weight=1.0, spurious_in_decoder=True), "tc_weight > 0 penalises dependence"),
    (dict(invariance_weight=1.0, invariant=[]), "invariance_weight > 0 needs a categorical"),
])
def test_bad_arguments_are_named(data, kwargs, message):
    with pytest.raises(ValueError, match=message):
        InVAE(data.schema, **kwargs)


def test_do_domain_reaches_only_the_spurious_prior(data, replayed):
    torch.manual_seed(0)
    model = InVAE(data.schema, n_latent_inv=3, n_hidden=16, prior="mean")
    batch = data.batch(torch.arange(12))
    guide, trace = replayed(model, batch)
    other = (batch.domain + 1) % data.schema.n_domains
    moved = poutine.trace(poutine.replay(pyro.do(model.model, data={"domain": other}),
                                         trace=guide)).get_trace(batch)
    for site in ("z_inv", "z_spur"):
        same = torch.equal(moved.nodes[site]["fn"].base_dist.loc,
                           trace.nodes[site]["fn"].base_dist.loc)
        assert same == (site == "z_inv"), site


def test_fit_latent_counterfactual_and_round_trip(data, tmp_path):
    torch.manual_seed(0)
    model = InVAE(data.schema, n_latent_inv=3, n_latent_spur=2, n_hidden=32)
    history = fit(model, data, max_epochs=15, lr=3e-3, progress=False, device="cpu")
    assert history.validation_elbo[-1] > history.validation_elbo[0]
    z_inv = latent(model, data)  # the invariant block by default
    np.testing.assert_allclose(z_inv, latent(model, data, site="z_inv"))
    assert latent(model, data, site="z_spur").shape == (data.n_cells, 2)
    moved = counterfactual(model, data, {"domain": data.schema.domains[0]}, n_samples=3)
    assert moved.shape == (data.n_cells, data.schema.n_genes) and np.isfinite(moved.X).all()
    restored = load(save(model, tmp_path / "invae.pt"), data)
    assert type(restored) is InVAE and restored.init_args == model.init_args
    np.testing.assert_allclose(latent(restored, data), z_inv, rtol=1e-5, atol=1e-6)


def test_penalties_are_recorded_and_reach_the_encoders(data, replayed):
    """The total-correlation and invariance factors enter the loss with their weights, are
    reported apart from the ELBO, and their gradients reach the encoders."""
    torch.manual_seed(0)
    model = InVAE(data.schema, n_latent_inv=3, n_latent_spur=2, n_hidden=16, tc_weight=1.0,
                  invariance_weight=5.0)
    batch = data.batch(torch.arange(64), n_cells=data.n_cells)
    guide, trace = replayed(model, batch)
    trace.compute_log_prob()
    for site in ("total_correlation", "conditional_invariance"):
        model.zero_grad()
        trace.nodes[site]["log_prob_sum"].backward(retain_graph=True)
        for block in (model.inv, model.spur) if site == "total_correlation" else (model.inv,):
            gradient = block.encoder.net.layers[0].weight.grad
            assert gradient is not None and gradient.abs().sum() > 0, (site, block.name)
    history = fit(model, data, max_epochs=2, lr=1e-3, progress=False, device="cpu")
    assert set(history.penalties) == {"total_correlation", "conditional_invariance"}
    assert all(np.isfinite(v).all() for v in history.penalties.values())


def test_the_nonfactorized_prior_trains_by_score_matching_and_keeps_z_inv_under_do_domain(data):
    torch.manual_seed(0)
    model = InVAE(data.schema, n_latent_inv=3, n_latent_spur=2, n_hidden=16,
                  prior="nonfactorized", score_matching_lr=1e-2)
    before = [p.detach().clone() for p in model.inv.prior.parameters()]
    history = fit(model, data, max_epochs=3, lr=3e-3, progress=False, device="cpu")
    assert len(history.adversary_loss["score_matching"]) == 3
    assert any(not torch.equal(b, p.cpu()) for b, p in zip(before, model.inv.prior.parameters()))
    # do(domain): z_inv's prior is unchanged, so the cell keeps its z_inv; counterfactuals work
    moved = counterfactual(model, data, {"domain": data.schema.domains[1]}, n_samples=2)
    assert np.isfinite(moved.X).all()
    with pytest.raises(ValueError, match="changes the non-factorized prior of .* cells"):
        counterfactual(model, data, {"label": data.schema.labels[0]}, n_samples=1)


def test_round_trip_of_every_prior(data, tmp_path):
    for prior in ("variance", "nonfactorized"):
        torch.manual_seed(0)
        model = InVAE(data.schema, n_latent_inv=2, n_latent_spur=1, n_hidden=8, prior=prior,
                      tc_weight=0.5)
        fit(model, data, max_epochs=1, progress=False, device="cpu")
        restored = load(save(model, tmp_path / f"{prior}.pt"), data)
        assert restored.init_args == model.init_args
        for key, value in model.state_dict().items():
            assert torch.equal(restored.state_dict()[key], value.cpu()), key
