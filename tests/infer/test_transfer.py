"""transfer: only new perturbations' parameters move; the result scores held-out cells."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from pyro_causalcell import CellData, SparseShiftVAE, VAE, fit, load, save, transfer
from pyro_causalcell.infer import known_rows_unchanged
from pyro_causalcell.infer import mean_importance_weighted_elbo
from pyro_causalcell.simulate.sparse_shift import sparse_shift, split_perturbations


@pytest.fixture(scope="module")
def split():
    adata = sparse_shift(n_latent=3, n_perturbations=6, n_cells_per_perturbation=60, n_genes=40,
                         n_control_cells=60, seed=3)
    train, held = split_perturbations(adata, held_out=["p4", "p5"])
    data = CellData.from_anndata(train, perturbation_key="perturbation", control="control")
    torch.manual_seed(0)
    model = SparseShiftVAE(data.schema, n_latent=3, n_hidden=32, sparsity="svae+",
                           sparsity_weight=5.0)
    fit(model, data, max_epochs=40, batch_size=64, progress=False)
    return model, train, held


def test_only_new_perturbations_change(split):
    model, _, held = split
    before = {k: v.clone() for k, v in model.state_dict().items()}
    result = transfer(model, held, max_epochs=5, batch_size=64, progress=False)
    new = result.model
    assert new.schema.perturbations == model.schema.perturbations + ("p4", "p5")
    assert result.data.schema == new.schema and result.data.n_cells == held.n_obs
    # the fitted model itself is untouched, and the copy keeps every known value bit for bit
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert known_rows_unchanged(model, new)
    for name in ("shift_loc", "target_logit"):
        assert not torch.equal(getattr(new, name)[-2:].cpu(), torch.zeros(2, 3))
    assert all(p.requires_grad for p in new.parameters())  # nothing left frozen
    assert len(result.history.train_elbo) == 5


def test_transfer_raises_the_held_out_likelihood(split):
    model, _, held = split
    result = transfer(model, held, max_epochs=60, batch_size=32, lr=2e-2, progress=False)
    before = result.model.__class__(result.model.schema, **result.model.init_args)
    before.load_state_dict(result.model.state_dict())
    with torch.no_grad():  # the new perturbations back at their initial values
        before.shift_loc[-2:] = 0.0
        before.target_logit[-2:] = 0.0
        before.shift_raw_scale[-2:] = -3.0
        before.target_log_concentration[-2:] = math.log(10.0)
    after_score = mean_importance_weighted_elbo(result.model, result.data, 20, seed=0)
    before_score = mean_importance_weighted_elbo(before, result.data, 20, seed=0)
    assert after_score > before_score


def test_transferred_model_round_trips(split, tmp_path):
    model, _, held = split
    result = transfer(model, held, max_epochs=1, progress=False)
    restored = load(save(result.model, tmp_path / "m.pt"), result.data)
    assert known_rows_unchanged(result.model, restored) and known_rows_unchanged(
        restored, result.model)


def test_explicit_celldata_and_errors(split):
    model, train, held = split
    encoded = CellData.from_anndata(held, schema=model.schema.with_perturbations(["p4", "p5"]))
    assert transfer(model, encoded, max_epochs=1, progress=False).model.schema == encoded.schema
    wrong = CellData.from_anndata(held, schema=model.schema.with_perturbations(["p5", "p4"]))
    with pytest.raises(ValueError, match="not encoded with the model's schema extended by"):
        transfer(model, wrong, ["p4", "p5"], max_epochs=1, progress=False)
    with pytest.raises(ValueError, match="no new perturbation to transfer to"):
        transfer(model, train, max_epochs=1, progress=False)
    with pytest.raises(ValueError, match="cannot add perturbations \\['p0'\\]"):
        transfer(model, held, ["p0"], max_epochs=1, progress=False)
    with pytest.raises(TypeError, match="transfer needs model.add_perturbations"):
        transfer(VAE(model.schema), held, max_epochs=1, progress=False)
    plain = SparseShiftVAE(model.schema, n_latent=3, sparsity="vae")
    with pytest.raises(ValueError, match="has no per-perturbation parameters"):
        transfer(plain, held, max_epochs=1, progress=False)


def test_unseen_perturbation_error_points_to_transfer(split):
    from pyro_causalcell import DataValidationError
    model, _, held = split
    with pytest.raises(DataValidationError, match="pyro_causalcell.transfer"):
        CellData.from_anndata(held, schema=model.schema)
    assert np.isin(["p4", "p5"], held.obs["perturbation"].unique()).all()
