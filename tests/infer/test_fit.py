"""The training engine: plain SVI, fit reproducibility, warm-up, early stopping, NaN handling."""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch
from pyro.infer import SVI, Trace_ELBO

from pyro_causalcell import VAE, CellData, fit
from pyro_causalcell.infer import TrainingDivergedError, evaluate_elbo
from pyro_causalcell.simulate import cell_types


@pytest.fixture(scope="module")
def sim_data() -> CellData:
    adata = cell_types(n_cells=300, n_genes=40, n_cell_types=3, seed=3)
    return CellData.from_anndata(adata, domain_key="batch")


def new_vae(schema, seed=0, **kwargs):
    torch.manual_seed(seed)
    return VAE(schema, n_latent=3, n_hidden=32, **kwargs)


def test_plain_pyro_svi_lowers_the_loss(sim_data):
    model = new_vae(sim_data.schema)
    svi = SVI(model.model, model.guide, pyro.optim.Adam({"lr": 1e-2}), Trace_ELBO())
    index = torch.arange(sim_data.n_cells)
    full = sim_data.batch(index)
    before = np.mean([Trace_ELBO().loss(model.model, model.guide, full) for _ in range(5)])
    for _ in range(15):
        for batch in sim_data.batches(64, shuffle=True):
            svi.step(batch)
    after = np.mean([Trace_ELBO().loss(model.model, model.guide, full) for _ in range(5)])
    assert after < 0.9 * before


def test_fit_is_reproducible_with_a_seed(sim_data):
    runs = []
    for _ in range(2):
        model = new_vae(sim_data.schema)
        history = fit(model, sim_data, max_epochs=3, batch_size=64, seed=7, progress=False,
                      device="cpu")
        runs.append((history.train_elbo, history.validation_elbo,
                     model.encoder.net.layers[0].weight.detach().clone()))
    assert runs[0][0] == runs[1][0]
    assert runs[0][1] == runs[1][1]
    assert torch.equal(runs[0][2], runs[1][2])
    other = fit(new_vae(sim_data.schema), sim_data, max_epochs=3, batch_size=64, seed=8,
                progress=False, device="cpu")
    assert other.train_elbo != runs[0][0]


def test_fit_improves_the_validation_elbo_and_records_history(sim_data):
    model = new_vae(sim_data.schema)
    history = fit(model, sim_data, max_epochs=8, batch_size=32, lr=1e-2, progress=False,
                  kl_warmup_epochs=4)
    assert history.n_epochs == 8 and len(history.validation_elbo) == 8
    assert history.kl_weight == [0.25, 0.5, 0.75, 1.0, 1.0, 1.0, 1.0, 1.0]
    assert history.validation_elbo[-1] > history.validation_elbo[0]
    frame = history.to_dataframe()
    assert list(frame.columns) == ["epoch", "train_elbo", "validation_elbo", "kl_weight"]
    # the recorded validation ELBO is the per-cell ELBO on held-out cells
    generator = torch.Generator().manual_seed(0)
    from pyro_causalcell.infer.fit import split_cells
    _, held_out = split_cells(sim_data.n_cells, 0.1, generator)
    again = np.mean([evaluate_elbo(model, sim_data, held_out) for _ in range(20)])
    assert again == pytest.approx(history.validation_elbo[-1], rel=0.05)


def test_early_stopping_keeps_the_best_epoch(sim_data):
    model = new_vae(sim_data.schema)
    # a huge learning rate makes the validation ELBO stall or worsen quickly
    history = fit(model, sim_data, max_epochs=60, batch_size=32, lr=5e-2, early_stopping=True,
                  patience=2, progress=False)
    assert history.stopped_early
    assert history.n_epochs < 60
    best = history.best_epoch
    assert history.validation_elbo[best] == max(history.validation_elbo)
    assert history.n_epochs == best + 1 + 2


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_nan_loss_stops_with_a_clear_error_and_keeps_last_good_parameters(sim_data):
    model = new_vae(sim_data.schema)
    fit(model, sim_data, max_epochs=1, progress=False)
    good = {k: v.clone() for k, v in model.state_dict().items()}

    calls = {"n": 0}
    original = model.guide

    def guide_that_breaks(batch):
        calls["n"] += 1
        if model.training and calls["n"] >= 3:  # a training step after the first
            with torch.no_grad():
                model.encoder.net.layers[0].weight.fill_(float("nan"))
        return original(batch)

    model.guide = guide_that_breaks
    with pytest.raises(TrainingDivergedError, match=r"the loss became nan at epoch 0, step \d; "
                       r"the model holds its parameters from before this fit\. Lower lr"):
        fit(model, sim_data, max_epochs=2, progress=False)
    for key, value in model.state_dict().items():
        assert torch.equal(value, good[key]), key


def test_fit_refuses_bad_arguments(sim_data):
    model = new_vae(sim_data.schema)
    with pytest.raises(ValueError, match="early_stopping=True needs held-out cells"):
        fit(model, sim_data, early_stopping=True, validation_fraction=0.0, progress=False)
    with pytest.raises(ValueError, match=r"validation_fraction must be in \[0, 1\)"):
        fit(model, sim_data, validation_fraction=1.0, progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="device='cuda' was requested but CUDA is not"):
            fit(model, sim_data, device="cuda", max_epochs=1, progress=False)


def test_fit_refuses_data_with_another_schema(sim_data):
    other = CellData.from_anndata(cell_types(n_cells=50, n_genes=40, seed=1))  # no domain_key
    model = new_vae(sim_data.schema)
    with pytest.raises(ValueError, match="domain_key: 'batch' vs None"):
        fit(model, other, max_epochs=1, progress=False)


def test_fit_streams_batches_from_sparse_storage(sim_data):
    assert type(sim_data.counts).__name__ == "SparseCounts"
    model = new_vae(sim_data.schema)
    history = fit(model, sim_data, max_epochs=2, progress=False, validation_fraction=0.0)
    assert history.validation_elbo == [] and np.isfinite(history.train_elbo).all()


def test_a_last_step_that_breaks_the_parameters_is_caught(sim_data):
    """With no validation cells, nothing evaluates the model after the last step but this check."""
    model = new_vae(sim_data.schema)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    weight = model.decoder.net.layers[0].weight
    weight.register_hook(lambda grad: torch.full_like(grad, float("nan")))
    with pytest.raises(TrainingDivergedError, match=r"parameters \['decoder\.net\.layers\.0\."
                       r"weight'\] became NaN or infinite at epoch 0, last step; the model "
                       r"holds its parameters from before this fit"):
        fit(model, sim_data, max_epochs=1, batch_size=sim_data.n_cells, validation_fraction=0.0,
            progress=False, device="cpu")
    for key, value in model.state_dict().items():
        assert torch.equal(value.cpu(), before[key].cpu()), key


def test_fit_leaves_the_global_random_generators_alone(sim_data):
    import random

    model = new_vae(sim_data.schema)
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    expected = (random.random(), np.random.rand(), torch.rand(1))
    random.seed(1), np.random.seed(1), torch.manual_seed(1)
    fit(model, sim_data, max_epochs=1, seed=123, progress=False, device="cpu")
    assert (random.random(), np.random.rand(), torch.rand(1)) == expected
