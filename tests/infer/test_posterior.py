"""global_posterior: samples of global guide sites as ArviZ InferenceData."""

from __future__ import annotations

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pyro_causalcell import CellData
from pyro_causalcell.infer.posterior import global_posterior
from pyro_causalcell.models import VAE, SparseShiftVAE
from pyro_causalcell.simulate.sparse_shift import sparse_shift

N_SAMPLES = 2000


@pytest.fixture(scope="module")
def data():
    adata = sparse_shift(n_latent=4, n_perturbations=6, n_cells_per_perturbation=40,
                         n_genes=50, n_control_cells=60, seed=1)
    return CellData.from_anndata(adata, perturbation_key="perturbation", control="control")


@pytest.fixture(scope="module")
def model(data):
    """sVAE+ whose shift and target-probability guides have known, varied parameters."""
    model = SparseShiftVAE(data.schema, n_latent=4, n_hidden=16, sparsity="svae+")
    shape = model.shift_loc.shape
    with torch.no_grad():
        model.shift_loc.copy_(torch.linspace(-3.0, 3.0, shape.numel()).reshape(shape))
        model.shift_raw_scale.copy_(torch.linspace(-2.0, 1.0, shape.numel()).reshape(shape))
        model.target_logit.copy_(torch.linspace(-2.5, 2.5, shape.numel()).reshape(shape))
        model.target_log_concentration.copy_(torch.linspace(1.0, 4.0, shape.numel()
                                                            ).reshape(shape))
    return model


@pytest.fixture(scope="module")
def idata(model, data):
    return global_posterior(model, data, n_samples=N_SAMPLES)


def test_dims_coords_and_shapes(idata, model, data):
    P = data.schema.n_perturbations
    assert set(idata.posterior.data_vars) == {"shift", "target_probability"}
    for name in ("shift", "target_probability"):
        variable = idata.posterior[name]
        assert variable.dims == ("chain", "draw", "perturbation", "latent")
        assert variable.shape == (1, N_SAMPLES, P, 4)
    assert list(idata.posterior.perturbation.values) == list(data.schema.perturbations)
    assert list(idata.posterior.latent.values) == ["z0", "z1", "z2", "z3"]
    probability = idata.posterior["target_probability"].values
    assert ((probability > 0) & (probability < 1)).all()


def test_moments_match_the_guide(idata, model):
    shift = idata.posterior["shift"].values[0]
    loc = model.shift_loc.detach().numpy()
    scale = (F.softplus(model.shift_raw_scale.detach()) + 1e-4).numpy()
    stderr = scale / np.sqrt(N_SAMPLES)
    assert np.all(np.abs(shift.mean(0) - loc) < 5 * stderr)
    # sd of a Gaussian sample: relative standard error ~ 1 / sqrt(2 n)
    np.testing.assert_allclose(shift.std(0), scale, rtol=5 / np.sqrt(2 * N_SAMPLES))
    beta = model.target_posterior()
    mean, sd = beta.mean.detach().numpy(), beta.stddev.detach().numpy()
    probability = idata.posterior["target_probability"].values[0]
    assert np.all(np.abs(probability.mean(0) - mean) < 5 * sd / np.sqrt(N_SAMPLES))


def test_seeded_and_restores_training_mode_and_rng(model, data):
    model.train()
    state = torch.get_rng_state()
    first = global_posterior(model, data, sites=["shift"], n_samples=5, seed=3)
    assert model.training and torch.equal(torch.get_rng_state(), state)
    assert list(first.posterior.data_vars) == ["shift"]
    again = global_posterior(model, data, sites=["shift"], n_samples=5, seed=3)
    other = global_posterior(model, data, sites=["shift"], n_samples=5, seed=4)
    np.testing.assert_array_equal(first.posterior["shift"], again.posterior["shift"])
    assert not np.array_equal(first.posterior["shift"], other.posterior["shift"])


def test_summary_has_credible_intervals(idata):
    import arviz as az

    summary = az.summary(idata, var_names=["shift"], hdi_prob=0.9, kind="stats")
    assert {"mean", "sd", "hdi_5%", "hdi_95%"} <= set(summary.columns)
    assert len(summary) == idata.posterior["shift"][0, 0].size
    assert (summary["hdi_5%"] <= summary["mean"]).all()


def test_errors(model, data):
    with pytest.raises(ValueError, match=r"unknown global site\(s\) \['z'\].*'shift', 'target_probability'"):
        global_posterior(model, data, sites=["z"], n_samples=2)
    with pytest.raises(ValueError, match="VAE has no global sites"):
        global_posterior(VAE(data.schema, n_latent=4, n_hidden=16), data, n_samples=2)
