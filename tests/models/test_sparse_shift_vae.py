"""SparseShiftVAE: sites, the stochastic intervention on targets, masks, save / load."""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
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


@pytest.mark.parametrize("sparsity", ["vae", "ivae", "svae", "svae+"])
def test_sites_and_shapes(sim, sparsity, replayed):
    _, data = sim
    model = SparseShiftVAE(data.schema, n_latent=4, n_hidden=16, sparsity=sparsity)
    batch = data.batch(torch.arange(20))
    guide, trace = replayed(model, batch)
    P = data.schema.n_perturbations
    if sparsity == "vae":
        assert "shift" not in trace.nodes and "perturbation" not in trace.nodes
    else:
        assert trace.nodes["shift"]["value"].shape == (P, 4)
        assert trace.nodes["perturbation"]["is_observed"]
        assert [f.name for f in trace.nodes["shift"]["cond_indep_stack"]] == ["perturbations"]
    assert ("target_probability" in trace.nodes) == (sparsity in ("svae", "svae+"))
    assert ("target_sparsity" in trace.nodes) == (sparsity == "svae")
    assert trace.nodes["z"]["value"].shape == (20, 4)
    assert trace.nodes["counts"]["is_observed"]
    assert np.isfinite(pyro.infer.Trace_ELBO().loss(model.model, model.guide, batch))


def test_certain_targets_follow_their_shift_and_others_stay_standard(sim):
    _, data = sim
    model = SparseShiftVAE(data.schema, n_latent=4, n_hidden=16, sparsity="svae+")
    P = data.schema.n_perturbations
    probability = torch.zeros(P, 4)
    probability[0, 1] = 1.0
    probability[1, 3] = 1.0
    shift = torch.arange(P * 4, dtype=torch.float32).reshape(P, 4) + 1.0
    perturbation = torch.zeros(3, P)
    perturbation[1, 0] = 1.0  # cell 1: first perturbation; cell 2: first and second
    perturbation[2, :2] = 1.0
    batch = data.batch(torch.arange(3))
    conditioned = poutine.condition(model.model,
                                    data={"target_probability": probability, "shift": shift})
    intervened = pyro.do(conditioned, data={"perturbation": perturbation})
    site = poutine.trace(intervened).get_trace(batch).nodes["z"]
    expected = torch.zeros(3, 4)
    expected[1, 1] = shift[0, 1]
    expected[2, 1], expected[2, 3] = shift[0, 1], shift[1, 3]
    z = site["value"]
    torch.testing.assert_close(site["fn"].log_prob(z),
                               dist.Normal(expected, 1.0).log_prob(z).sum(-1), atol=1e-4,
                               rtol=1e-5)


def test_iVAE_shifts_every_latent_of_perturbed_cells(sim):
    _, data = sim
    model = SparseShiftVAE(data.schema, n_latent=4, n_hidden=16, sparsity="ivae")
    P = data.schema.n_perturbations
    shift = torch.randn(P, 4)
    perturbation = torch.zeros(2, P)
    perturbation[1, [0, 2]] = 1.0
    program = pyro.do(poutine.condition(model.model, data={"shift": shift}),
                      data={"perturbation": perturbation})
    site = poutine.trace(program).get_trace(data.batch(torch.arange(2))).nodes["z"]
    loc = torch.stack([torch.zeros(4), shift[0] + shift[2]])
    torch.testing.assert_close(site["fn"].log_prob(site["value"]),
                               dist.Normal(loc, 1.0).log_prob(site["value"]).sum(-1))


def test_target_probabilities_frame(sim):
    _, data = sim
    model = SparseShiftVAE(data.schema, n_latent=4, n_hidden=16, sparsity="svae+")
    with torch.no_grad():
        model.target_logit[2, 3] = 5.0
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
    with pytest.raises(ValueError, match="sparsity_weight='strong'; give a number >= 0 or 'auto'"):
        SparseShiftVAE(data.schema, sparsity_weight="strong")
    with pytest.raises(ValueError, match="sparsity_weight must be >= 0 or 'auto', got -1"):
        SparseShiftVAE(data.schema, sparsity_weight=-1)


@pytest.mark.parametrize("sparsity, ratio", [("svae+", 0.4), ("svae", 0.6)])
def test_auto_sparsity_weight_follows_the_training_cells_per_perturbation(sim, tmp_path,
                                                                          sparsity, ratio):
    adata, data = sim
    model = SparseShiftVAE(data.schema, n_latent=4, n_hidden=16, sparsity=sparsity)
    assert model.sparsity_weight == "auto" and model.shifts.sparsity_weight == 50.0
    train = torch.arange(0, data.n_cells, 3)
    model.prepare_fit(data, train)
    labels = adata.obs["perturbation"].astype(str).iloc[train.numpy()]
    cells = labels[labels != "control"].value_counts()  # no combinations in this simulation
    assert model.sparsity_weight == pytest.approx(ratio * float(np.median(cells)))
    assert model.shifts.sparsity_weight == model.sparsity_weight
    assert model.init_args["sparsity_weight"] == model.sparsity_weight

    # an even number of perturbations takes the mean of the middle two; no perturbed training
    # cell leaves "auto" unset (a weight of 0 would be no prior at all)
    from pyro_causalcell.models.sparse_shift import median_cells_per_perturbation
    assert median_cells_per_perturbation(torch.tensor([[1.0, 0, 0, 0], [1, 1, 0, 0],
                                                       [1, 1, 1, 0], [1, 1, 1, 1]])) == 2.5
    controls = torch.from_numpy(np.flatnonzero(adata.obs["perturbation"] == "control"))
    untouched = SparseShiftVAE(data.schema, n_latent=4, n_hidden=16, sparsity=sparsity)
    untouched.prepare_fit(data, controls)
    assert untouched.sparsity_weight == "auto" and untouched.shifts.sparsity_weight == 50.0

    # fit sets it from its own training split (40 cells per perturbation, a quarter held
    # out for validation), once; the value is saved with the model
    model = SparseShiftVAE(data.schema, n_latent=4, n_hidden=16, sparsity=sparsity)
    fit(model, data, max_epochs=1, validation_fraction=0.25, progress=False)
    weight = model.sparsity_weight
    assert ratio * 25 <= weight <= ratio * 36
    fit(model, data, max_epochs=1, validation_fraction=0.5, progress=False)
    assert model.sparsity_weight == weight
    assert load(save(model, tmp_path / "auto.pt"), data).sparsity_weight == weight


def test_fit_trains_masks_and_shifts_and_round_trips(sim, tmp_path):
    _, data = sim
    torch.manual_seed(0)
    model = SparseShiftVAE(data.schema, n_latent=4, n_hidden=16, sparsity="svae+",
                           sparsity_weight=5.0)
    before = (model.target_logit.detach().clone(), model.shift_loc.detach().clone())
    history = fit(model, data, max_epochs=3, progress=False)
    assert np.isfinite(history.validation_elbo).all()
    assert not torch.equal(before[0], model.target_logit.cpu()) and not torch.equal(
        before[1], model.shift_loc.cpu())
    restored = load(save(model, tmp_path / "svae.pt"), data)
    assert restored.sparsity == "svae+" and restored.sparsity_weight == 5.0
    np.testing.assert_allclose(latent(restored, data), latent(model, data), rtol=1e-5, atol=1e-6)
    assert target_probabilities(restored).equals(target_probabilities(model))


# ---------------------------------------------------------------------- perturbation priors
def test_each_sparsity_is_a_perturbation_prior_object(sim):
    from pyro_causalcell.models.shift_priors import DenseShifts, SparseShifts

    _, data = sim
    models = {s: SparseShiftVAE(data.schema, n_latent=3, n_hidden=8, sparsity=s)
              for s in ("vae", "ivae", "svae", "svae+")}
    assert models["vae"].shifts is None and models["vae"].perturbation_parameters() == {}
    assert type(models["ivae"].shifts) is DenseShifts
    assert (models["svae"].shifts.penalty, models["svae+"].shifts.penalty) == ("l0", "beta")
    assert isinstance(models["svae+"].shifts, SparseShifts)
    assert set(models["ivae"].perturbation_parameters()) == {"shift_loc", "shift_raw_scale"}
    assert models["svae+"].shift_loc is models["svae+"].shifts.shift_loc
    with pytest.raises(AttributeError, match="has no attribute 'target_logit'"):
        models["ivae"].target_logit


@pytest.mark.parametrize("sparsity", ["vae", "ivae", "svae+"])
def test_files_with_the_former_table_names_still_load(sim, tmp_path, sparsity):
    """Before the priors were objects, every model held all four tables as its own
    parameters (``shift_loc``, not ``shifts.shift_loc``)."""
    from pyro_causalcell.infer.serialization import checksum

    _, data = sim
    torch.manual_seed(0)
    model = SparseShiftVAE(data.schema, n_latent=3, n_hidden=8, sparsity=sparsity)
    with torch.no_grad():
        for table in model.perturbation_parameters().values():
            table.normal_()
    path = save(model, tmp_path / "model.pt")
    payload = torch.load(path, weights_only=True)
    state = {k.removeprefix("shifts."): v for k, v in payload["state_dict"].items()}
    shape = (data.schema.n_perturbations, 3)
    for name in ("shift_loc", "shift_raw_scale", "target_logit", "target_log_concentration"):
        state.setdefault(name, torch.zeros(shape))  # the unused tables of vae / ivae
    payload["state_dict"] = state
    payload["checksum"] = checksum(payload)
    torch.save(payload, path)
    restored = load(path, data)
    for name, table in model.perturbation_parameters().items():
        assert torch.equal(restored.perturbation_parameters()[name], table), name
    np.testing.assert_allclose(latent(restored, data), latent(model, data), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("penalty", ["beta", "l0"])
def test_log_joint_is_the_mixture_plus_the_tables_prior_per_batch_of_tables(penalty):
    from pyro_causalcell.distributions import shift_mixture
    from pyro_causalcell.models.shift_priors import SparseShifts

    torch.manual_seed(0)
    prior = SparseShifts(3, 2, shift_prior_scale=2.0, penalty=penalty, sparsity_weight=7.0)
    perturbation = torch.tensor([[0.0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 1, 1]])
    shift, logit, z = torch.randn(5, 3, 2), torch.randn(5, 3, 2), torch.randn(5, 4, 2)
    got = prior.log_joint(z, perturbation, shift, logit)
    assert got.shape == (5,)
    for start in range(5):
        probability = torch.sigmoid(logit[start])
        want = (shift_mixture(perturbation, shift[start], probability).log_prob(z[start]).sum()
                + dist.Normal(0.0, 2.0).log_prob(shift[start]).sum())
        if penalty == "beta":
            want = want + dist.Beta(1.0, 7.0).log_prob(probability).sum()
        else:
            want = want - 7.0 * probability.sum()
        assert torch.isclose(got[start], want, atol=1e-3)
