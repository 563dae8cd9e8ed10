"""Posterior latents and the save / load round trip."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from pyro_causalcell import VAE, CellData, fit, latent, load, save
from pyro_causalcell.infer import ModelSchemaMismatchError
from pyro_causalcell.infer.protocol import model_device
from pyro_causalcell.infer.serialization import checksum
from pyro_causalcell.simulate import cell_types


@pytest.fixture(scope="module")
def fitted():
    adata = cell_types(n_cells=200, n_genes=30, seed=5)
    data = CellData.from_anndata(adata, domain_key="batch")
    torch.manual_seed(0)
    model = VAE(data.schema, n_latent=4, n_hidden=16, beta=2.0, likelihood="zinb")
    fit(model, data, max_epochs=3, progress=False)
    return adata, data, model


def test_latent_returns_guide_means_in_data_order(fitted):
    _, data, model = fitted
    z = latent(model, data, batch_size=37)  # batches that do not divide the cells
    assert z.shape == (data.n_cells, 4)
    cell = data.batch([5]).to(model_device(model))
    loc, _ = model.encoder(cell.counts, torch.eye(2, device=cell.counts.device)[cell.domain])
    np.testing.assert_allclose(z[5], loc[0].detach().cpu().numpy(), rtol=1e-5, atol=1e-6)
    # a mean, not a sample; other batch sizes change only the last bits of the matrix products
    np.testing.assert_allclose(z, latent(model, data), rtol=1e-5, atol=1e-6)


def test_latent_names_the_sites_when_the_site_is_missing(fitted):
    _, data, model = fitted
    with pytest.raises(KeyError, match=r"no sample site 'z_inv'.*\['z'\]"):
        latent(model, data, site="z_inv")


def test_save_load_round_trip_gives_the_same_latents(fitted, tmp_path):
    _, data, model = fitted
    path = save(model, tmp_path / "models" / "vae.pt")
    assert os.listdir(tmp_path / "models") == ["vae.pt"]  # no temporary file left behind
    restored = load(path, data)
    assert type(restored) is VAE
    assert restored.init_args == model.init_args
    assert restored.schema == data.schema
    for name, value in model.state_dict().items():
        assert torch.equal(restored.state_dict()[name], value.cpu()), name  # the same numbers
    np.testing.assert_allclose(latent(restored, data), latent(model, data), rtol=1e-5, atol=1e-6)


def test_load_refuses_data_encoded_with_another_schema(fitted, tmp_path):
    adata, data, model = fitted
    path = save(model, tmp_path / "vae.pt")
    reordered = adata[:, adata.var_names[::-1]].copy()
    wrong = CellData.from_anndata(reordered, domain_key="batch")
    with pytest.raises(ModelSchemaMismatchError, match="genes: same values in a different order"):
        load(path, wrong)
    right = CellData.from_anndata(reordered, schema=load(path).schema)
    np.testing.assert_allclose(latent(load(path, right), right), latent(model, data), atol=1e-5)


def test_save_refuses_models_without_constructor_arguments(tmp_path):
    with pytest.raises(TypeError, match="save needs model.schema"):
        save(torch.nn.Linear(2, 2), tmp_path / "x.pt")


def test_load_warns_about_a_model_saved_by_another_version(fitted, tmp_path):
    _, data, model = fitted
    path = save(model, tmp_path / "vae.pt")
    payload = torch.load(path, weights_only=True)
    payload["version"] = "0.0.1"
    payload["checksum"] = checksum(payload)  # as that version would have written it
    torch.save(payload, path)
    with pytest.warns(UserWarning, match="saved by pyro_causalcell 0.0.1"):
        load(path, data)
