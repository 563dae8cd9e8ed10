"""LORD: class embeddings, per-cell content codes (stage one), the content encoder (stage two),
and the model protocol on both sides of the switch."""

from __future__ import annotations

import copy

import numpy as np
import pyro.distributions as dist
import pytest
import torch

from pyro_causalcell import LORD, CellData, counterfactual, fit, latent, load, save
from pyro_causalcell.infer.protocol import model_device
from pyro_causalcell.simulate import invariant_spurious


@pytest.fixture(scope="module")
def adata():
    return invariant_spurious(n_cells=300, n_genes=30, seed=5)


@pytest.fixture(scope="module")
def data(adata) -> CellData:
    return CellData.from_anndata(adata, label_key="label", domain_key="domain")


def small(data, **kwargs) -> LORD:
    torch.manual_seed(0)
    return LORD(data.schema, n_latent_class=2, n_latent_content=3, n_hidden=16, **kwargs)


def stage_one(model, data, epochs: int = 3) -> LORD:
    fit(model, data, max_epochs=epochs, lr=1e-2, validation_fraction=0.0, progress=False,
        device="cpu")
    return model


def test_sites_shapes_and_the_decoder_reads_class_and_content_only(data, replayed):
    model = small(data)
    stage_one(model, data, epochs=1)
    batch = data.batch(torch.arange(32)).to(model_device(model))
    guide, trace = replayed(model, batch)
    assert trace.nodes["z_content"]["value"].shape == (32, 3)
    assert trace.nodes["z_content"]["value"] is guide.nodes["z_content"]["value"]
    for site in ["label", "domain", "counts"]:
        assert trace.nodes[site]["is_observed"], site
    assert trace.nodes["expression"]["value"].shape == (32, 30)
    assert model.decoder.net.layers[0].in_features == 2 + 3
    # stage one: the guide is the cell's own code, blurred by the content noise
    fn = guide.nodes["z_content"]["fn"]
    torch.testing.assert_close(fn.mean, model.codes[:32])
    torch.testing.assert_close(fn.base_dist.scale.cpu(), torch.full((32, 3), 0.1))
    assert model.codes.shape == (data.n_cells, 3) and model.stage == 1
    point = stage_one(small(data, content_noise=0.0), data, epochs=1)
    assert isinstance(replayed(point, batch)[0].nodes["z_content"]["fn"], dist.Delta)


def test_the_prior_is_the_l2_penalty(data):
    model = small(data, content_penalty=2.0)
    assert model.content_scale == pytest.approx(0.5)  # N(0, 1 / (2 lambda))
    codes = torch.randn(5, 3)
    log_prior = dist.Normal(0.0, model.content_scale).log_prob(codes).sum(-1)
    torch.testing.assert_close(log_prior - log_prior[0],
                               -2.0 * (codes.square().sum(-1) - codes[0].square().sum()))


def test_bad_settings_get_named_errors(data, adata):
    with pytest.raises(ValueError, match="class_key='dose'"):
        LORD(data.schema, class_key="dose")
    with pytest.raises(ValueError, match="the data carries no perturbation"):
        LORD(data.schema, class_key="perturbation")
    for name, value in [("content_noise", -0.1), ("content_penalty", 0.0)]:
        with pytest.raises(ValueError, match=name):
            LORD(data.schema, **{name: value})
    model = small(data)
    with pytest.raises(RuntimeError, match="stage one has not been fitted"):
        model.start_stage_two()
    with pytest.raises(ValueError, match="fit stage one with validation_fraction=0"):
        fit(model, data, max_epochs=1, progress=False, device="cpu")
    stage_one(model, data, epochs=1)
    other = CellData.from_anndata(adata[:100].copy(), schema=data.schema)
    with pytest.raises(ValueError, match="Fit stage two"):
        latent(model, CellData.from_anndata(
            invariant_spurious(n_cells=400, n_genes=30, seed=6, world_seed=5),
            schema=data.schema))
    model.start_stage_two()
    with pytest.raises(ValueError, match="stage-one codes of the 300 cells .* this data has 100"):
        fit(model, other, max_epochs=1, progress=False, device="cpu")


def test_stage_two_trains_the_encoder_alone_towards_the_codes(data):
    model = stage_one(small(data), data, epochs=5)
    frozen = {k: v.clone() for k, v in model.state_dict().items()
              if not k.startswith("content_encoder")}
    encoder = copy.deepcopy(model.content_encoder.state_dict())
    parameters = model.start_stage_two()
    assert model.stage == 2 and bool(model.amortised)
    assert {id(p) for p in parameters} == {id(p) for p in model.content_encoder.parameters()}
    history = fit(model, data, max_epochs=30, lr=1e-2, progress=False, device="cpu",
                  parameters=parameters)
    for name, value in model.state_dict().items():
        if name in frozen and name != "amortised":
            assert torch.equal(value, frozen[name]), name
    assert any(not torch.equal(v, encoder[k]) for k, v in model.content_encoder.state_dict().items())
    match = history.penalties["content_match"]
    assert match[-1] > match[0]  # the encoder's content moves towards the codes
    assert history.validation_elbo  # stage two can hold cells out


def test_class_swap_is_a_counterfactual_and_the_own_class_gives_the_cell_back(data, adata):
    model = stage_one(small(data), data, epochs=3)
    fit(model, data, max_epochs=3, progress=False, device="cpu",
        parameters=model.start_stage_two())
    own = counterfactual(model, data, {"label": torch.as_tensor(data.label)}, n_samples=4)
    first = data.schema.labels[0]
    swapped = counterfactual(model, data, {"label": first}, n_samples=4)
    is_first = (data.label == 0).numpy()
    np.testing.assert_allclose(swapped.X[is_first], own.X[is_first], rtol=1e-5)
    assert not np.allclose(swapped.X[~is_first], own.X[~is_first], rtol=1e-3)


def test_a_combination_class_embeds_as_the_sum_of_its_members(make_adata, all_keys):
    data = CellData.from_anndata(make_adata(), **all_keys)
    model = LORD(data.schema, n_latent_class=4, n_latent_content=2, class_key="perturbation")
    codes = torch.tensor([[0.0, 0.0], [1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    control, a, b, both = model.class_embeddings(codes)
    torch.testing.assert_close(both - control, (a - control) + (b - control))


def test_save_and_load_keep_the_stage_and_the_codes(data, tmp_path):
    model = stage_one(small(data), data, epochs=2)
    path = save(model, tmp_path / "lord.pt")
    loaded = load(path)
    assert loaded.stage == 1 and torch.equal(loaded.codes, model.codes.cpu())
    np.testing.assert_allclose(latent(loaded, data), latent(model, data), rtol=1e-5, atol=1e-6)
    fit(model, data, max_epochs=2, progress=False, device="cpu",
        parameters=model.start_stage_two())
    loaded = load(save(model, tmp_path / "lord2.pt"))
    assert loaded.stage == 2
    np.testing.assert_allclose(latent(loaded, data), latent(model, data), rtol=1e-5, atol=1e-6)
