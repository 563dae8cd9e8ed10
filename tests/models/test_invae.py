"""InVAE: invariant and spurious blocks with covariate-conditioned priors, on the shared engines."""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine

from pyro_causalcell import CellData, InVAE, counterfactual, fit, latent, load, save
from pyro_causalcell.models.blocks import ConditionalNormalPrior, NormalPrior
from pyro_causalcell.simulate import invariant_spurious


@pytest.fixture(scope="module")
def data() -> CellData:
    adata = invariant_spurious(n_cells=600, n_genes=60, seed=1)
    return CellData.from_anndata(adata, domain_key="domain", label_key="label")


def traces(model, batch):
    guide = poutine.trace(model.guide).get_trace(batch)
    return guide, poutine.trace(poutine.replay(model.model, trace=guide)).get_trace(batch)


def test_sites_and_default_covariates(data):
    torch.manual_seed(0)
    model = InVAE(data.schema, n_latent_inv=3, n_latent_spur=2, n_hidden=16)
    assert (model.invariant, model.spurious) == (["label"], ["domain"])
    guide, trace = traces(model, data.batch(torch.arange(8)))
    assert trace.nodes["label"]["is_observed"] and trace.nodes["domain"]["is_observed"]
    assert trace.nodes["z_inv"]["value"].shape == (8, 3)
    assert trace.nodes["z_spur"]["value"].shape == (8, 2)
    assert set(guide.nodes) >= {"z_inv", "z_spur"} and "label" not in guide.nodes
    assert isinstance(model.inv.prior, ConditionalNormalPrior)
    assert model.inv.prior.mode == "variance"


def test_the_guide_does_not_need_the_label(data):
    """New cells of unknown type can be encoded: the encoder reads counts and the domain."""
    torch.manual_seed(0)
    model = InVAE(data.schema, n_latent_inv=3, n_hidden=16)
    batch = data.batch(torch.arange(8))
    with_label = poutine.trace(model.guide).get_trace(batch)
    batch.label = None
    without = poutine.trace(model.guide).get_trace(batch)
    assert torch.equal(with_label.nodes["z_inv"]["fn"].base_dist.loc,
                       without.nodes["z_inv"]["fn"].base_dist.loc)


def test_prior_variants_and_the_empty_covariate_set(data):
    for mode in ("mean", "both"):
        assert InVAE(data.schema, prior=mode).inv.prior.mode == mode
    assert isinstance(InVAE(data.schema, prior="none").inv.prior, NormalPrior)
    assert isinstance(InVAE(data.schema, invariant=[]).inv.prior, NormalPrior)
    decoder_only = InVAE(data.schema, n_latent_inv=3, spurious_in_decoder=True, n_hidden=16)
    assert decoder_only.spur is None
    assert decoder_only.decoder.net.layers[0].in_features == 3 + data.schema.n_domains
    _, trace = traces(decoder_only, data.batch(torch.arange(4)))
    assert "z_spur" not in trace.nodes


@pytest.mark.parametrize("kwargs, message", [
    (dict(invariant=["donor"]), r"covariates \['donor'\] are not carried by the data"),
    (dict(invariant=["label"], spurious=["label"]), r"\['label'\] cannot be both"),
    (dict(prior="flat"), "prior='flat'; choose one of"),
])
def test_bad_arguments_are_named(data, kwargs, message):
    with pytest.raises(ValueError, match=message):
        InVAE(data.schema, **kwargs)


def test_do_domain_reaches_only_the_spurious_prior(data):
    torch.manual_seed(0)
    model = InVAE(data.schema, n_latent_inv=3, n_hidden=16, prior="mean")
    batch = data.batch(torch.arange(12))
    guide, trace = traces(model, batch)
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
