"""SparseShiftVAE: sites, the stochastic intervention on targets, masks, save / load."""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine

from pyro_causalcell import CellData, fit, latent, load, save
from pyro_causalcell.models import SparseShiftVAE, target_probabilities
from pyro_causalcell.simulate.sparse_shift import sparse_shift


@pytest.fixture(scope="module")
def sim():
    adata = sparse_shift(n_latent=4, n_perturbations=6, n_cells_per_perturbation=40,
                         n_genes=50, n_control_cells=60, seed=1)
    data = CellData.from_anndata(adata, perturbation_key="perturbation", control="control")
    return adata, data


def traces(model, batch):
    guide = poutine.trace(model.guide).get_trace(batch)
    return guide, poutine.trace(poutine.replay(model.model, trace=guide)).get_trace(batch)


@pytest.mark.parametrize("sparsity", ["vae", "ivae", "svae", "svae+"])
def test_sites_and_shapes(sim, sparsity):
    _, data = sim
    model = SparseShiftVAE(data.schema, n_latent=4, n_hidden=16, sparsity=sparsity)
    batch = data.batch(torch.arange(20))
    guide, trace = traces(model, batch)
    P = data.schema.n_perturbations
    if sparsity == "vae":
        assert "shift" not in trace.nodes and "perturbation" not in trace.nodes
    else:
        assert trace.nodes["shift"]["value"].shape == (P, 4)
        assert trace.nodes["perturbation"]["is_observed"]
        assert [f.name for f in trace.nodes["shift"]["cond_indep_stack"]] == ["perturbations"]
    assert ("mask" in trace.nodes) == (sparsity in ("svae", "svae+"))
    assert ("mask_sparsity" in trace.nodes) == (sparsity == "svae")
    assert trace.nodes["z"]["value"].shape == (20, 4)
    assert trace.nodes["counts"]["is_observed"]
    assert np.isfinite(pyro.infer.Trace_ELBO().loss(model.model, model.guide, batch))


def test_targets_of_a_perturbation_follow_its_shift_and_others_stay_standard(sim):
    _, data = sim
    model = SparseShiftVAE(data.schema, n_latent=4, n_hidden=16, sparsity="svae+")
    P = data.schema.n_perturbations
    mask = torch.zeros(P, 4)
    mask[0, 1] = 1.0
    mask[1, 3] = 1.0
    shift = torch.arange(P * 4, dtype=torch.float32).reshape(P, 4) + 1.0
    perturbation = torch.zeros(3, P)
    perturbation[1, 0] = 1.0  # cell 1: first perturbation; cell 2: first and second
    perturbation[2, :2] = 1.0
    batch = data.batch(torch.arange(3))
    conditioned = poutine.condition(model.model, data={"mask": mask, "shift": shift})
    intervened = pyro.do(conditioned, data={"perturbation": perturbation})
    prior = poutine.trace(intervened).get_trace(batch).nodes["z"]["fn"].base_dist
    expected = torch.zeros(3, 4)
    expected[1, 1] = shift[0, 1]
    expected[2, 1], expected[2, 3] = shift[0, 1], shift[1, 3]
    torch.testing.assert_close(prior.loc, expected)
    torch.testing.assert_close(prior.scale, torch.ones(3, 4))


def test_target_probabilities_frame(sim):
    _, data = sim
    model = SparseShiftVAE(data.schema, n_latent=4, n_hidden=16, sparsity="svae+")
    with torch.no_grad():
        model.mask_logits[2, 3] = 5.0
    frame = target_probabilities(model)
    assert frame.shape == (data.schema.n_perturbations, 4)
    assert list(frame.index) == list(data.schema.perturbations)
    assert list(frame.columns) == ["z0", "z1", "z2", "z3"]
    assert frame.iloc[2, 3] == pytest.approx(1 / (1 + np.exp(-5.0)))
    assert frame.iloc[0, 0] == pytest.approx(0.5)
    dense = target_probabilities(SparseShiftVAE(data.schema, n_latent=4, sparsity="ivae"))
    assert (dense.values == 1).all()
    with pytest.raises(ValueError, match="needs a SparseShiftVAE with sparsity"):
        target_probabilities(SparseShiftVAE(data.schema, n_latent=4, sparsity="vae"))


def test_bad_arguments(sim):
    _, data = sim
    with pytest.raises(ValueError, match="sparsity='l1'"):
        SparseShiftVAE(data.schema, sparsity="l1")
    no_perturbations = CellData.from_anndata(sim[0])
    with pytest.raises(ValueError, match="needs perturbations: build the data with"):
        SparseShiftVAE(no_perturbations.schema, sparsity="svae+")


def test_fit_trains_masks_and_shifts_and_round_trips(sim, tmp_path):
    _, data = sim
    torch.manual_seed(0)
    model = SparseShiftVAE(data.schema, n_latent=4, n_hidden=16, sparsity="svae+",
                           sparsity_weight=5.0)
    before = (model.mask_logits.detach().clone(), model.shift_loc.detach().clone())
    history = fit(model, data, max_epochs=3, progress=False)
    assert np.isfinite(history.validation_elbo).all()
    assert not torch.equal(before[0], model.mask_logits) and not torch.equal(
        before[1], model.shift_loc)
    restored = load(save(model, tmp_path / "svae.pt"), data)
    assert restored.sparsity == "svae+" and restored.sparsity_weight == 5.0
    np.testing.assert_array_equal(latent(restored, data), latent(model, data))
    assert target_probabilities(restored).equals(target_probabilities(model))
