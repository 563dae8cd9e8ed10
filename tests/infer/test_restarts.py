"""fit_restarts: several initialisations, the best validation ELBO kept."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_causalcell import VAE, CellData, fit
from pyro_causalcell.infer import TrainingHistory, fit_restarts, restart_score
from pyro_causalcell.simulate import cell_types

SETTINGS = dict(max_epochs=3, batch_size=64, progress=False, device="cpu")


@pytest.fixture(scope="module")
def sim_data() -> CellData:
    adata = cell_types(n_cells=300, n_genes=40, n_cell_types=3, seed=3)
    return CellData.from_anndata(adata, domain_key="batch")


def make_vae(schema):
    return lambda: VAE(schema, n_latent=3, n_hidden=32)


def test_the_kept_model_is_the_restart_with_the_best_validation_elbo(sim_data):
    model, restarts = fit_restarts(make_vae(sim_data.schema), sim_data, 3, seed=5, **SETTINGS)
    assert [r.init_seed for r in restarts] == [5, 6, 7]
    assert [r.kept for r in restarts].count(True) == 1
    kept = next(r for r in restarts if r.kept)
    assert kept.score == max(r.score for r in restarts)
    for r in restarts:
        assert r.score == pytest.approx(sum(r.history.validation_elbo[-5:]) /
                                        len(r.history.validation_elbo[-5:]))
    assert len({r.score for r in restarts}) == 3  # the initialisations differ
    assert all(r.seconds > 0 for r in restarts)
    # the kept model is that restart's fit, reproduced by hand with its init seed
    torch.manual_seed(kept.init_seed)
    again = make_vae(sim_data.schema)()
    history = fit(again, sim_data, seed=5, **SETTINGS)
    assert history.validation_elbo == pytest.approx(kept.history.validation_elbo, rel=1e-5)
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_one_restart_is_an_ordinary_fit(sim_data):
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    model, (only,) = fit_restarts(make_vae(sim_data.schema), sim_data, 1, seed=2, **SETTINGS)
    torch.testing.assert_close(torch.rand(3), expected)  # the global generator left alone
    torch.manual_seed(2)
    plain = make_vae(sim_data.schema)()
    history = fit(plain, sim_data, seed=2, **SETTINGS)
    assert only.kept and only.history.train_elbo == pytest.approx(history.train_elbo, rel=1e-6)


def test_restart_score_uses_the_kept_epoch_after_early_stopping():
    history = TrainingHistory(validation_elbo=[-10.0, -3.0, -4.0, -5.0], best_epoch=1)
    assert restart_score(history) == -3.0
    history = TrainingHistory(validation_elbo=[-9.0, -1.0, -2.0, -3.0, -4.0, -5.0])
    assert restart_score(history) == pytest.approx(-3.0)
    assert restart_score(TrainingHistory()) == -math.inf


@pytest.mark.parametrize("kwargs, message", [
    (dict(n_restarts=0), "n_restarts must be a positive integer, got 0"),
    (dict(n_restarts=2.0), "n_restarts must be a positive integer, got 2.0"),
    (dict(n_restarts=2, validation_fraction=0.0), "set validation_fraction > 0"),
    (dict(n_restarts=2, checkpoint="fit.pt"), "checkpoint is not supported by fit_restarts"),
])
def test_fit_restarts_refuses_bad_arguments(sim_data, kwargs, message):
    with pytest.raises(ValueError, match=message):
        fit_restarts(make_vae(sim_data.schema), sim_data, **kwargs, **SETTINGS)
