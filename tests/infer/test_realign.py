"""Realignment of sparse-shift latents: the search recovers mixed latents, the map is absorbed
into the networks without changing what they decode, and the fit around it."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyro_causalcell import VAE, CellData
from pyro_causalcell.infer import (TrainingHistory, fit_restarts, fit_with_realignment, latent,
                                   realign_latents, search_alignment)
from pyro_causalcell.metrics import mean_correlation_coefficient
from pyro_causalcell.models import SparseShiftVAE
from pyro_causalcell.models.shift_priors import SparseShifts
from pyro_causalcell.simulate import sparse_shift

SETTINGS = dict(batch_size=64, lr=1e-2, progress=False, device="cpu")


@pytest.fixture(scope="module")
def shift_data():
    adata = sparse_shift(n_latent=4, n_perturbations=12, n_cells_per_perturbation=60,
                         n_genes=40, seed=1)
    return adata, CellData.from_anndata(adata, perturbation_key="perturbation")


@pytest.fixture(scope="module")
def identifiable():
    """Twenty perturbations of at most two targets each among four latents."""
    adata = sparse_shift(n_latent=4, n_perturbations=20, n_cells_per_perturbation=50,
                         n_genes=40, max_targets=2, seed=1)
    return adata, CellData.from_anndata(adata, perturbation_key="perturbation")


@pytest.mark.parametrize("mix_seed", [0, 1, 2])
def test_search_recovers_linearly_mixed_true_latents(identifiable, mix_seed):
    adata, data = identifiable
    z_true = torch.as_tensor(adata.obsm["z_true"])
    rng = np.random.default_rng(mix_seed)
    mixing = torch.as_tensor(np.eye(4) + 0.7 * rng.normal(size=(4, 4)), dtype=torch.float32)
    mixed = z_true @ mixing.t() + 3.0  # mixed, shifted and rescaled
    before = mean_correlation_coefficient(z_true.numpy(), mixed.numpy())
    prior = SparseShifts(data.schema.n_perturbations, 4, penalty="beta", sparsity_weight=24.0)
    found = search_alignment(mixed, data.perturbation, prior, n_starts=4, steps=400, seed=0)
    after = mean_correlation_coefficient(z_true.numpy(), found.apply(mixed).numpy())
    assert before < 0.85
    assert after > 0.97
    assert len(found.scores) == 4 and found.scores[found.kept] == max(found.scores)
    assert found.shift.shape == found.target_logit.shape == (20, 4)


def test_search_rejects_mismatched_cells(shift_data):
    _, data = shift_data
    prior = SparseShifts(12, 4)
    with pytest.raises(ValueError, match=r"z must be \(cells, K\) and perturbation"):
        search_alignment(torch.zeros(5, 4), data.perturbation, prior)
    with pytest.raises(ValueError, match="n_starts and steps must be >= 1"):
        search_alignment(torch.zeros(5, 4), data.perturbation[:5], prior, n_starts=0)


def test_transform_latents_keeps_what_the_decoder_decodes(shift_data):
    _, data = shift_data
    torch.manual_seed(0)
    model = VAE(data.schema, n_latent=4, n_layers=2, norm="batch").eval()
    counts = next(iter(data.batches(16))).counts
    loc, _ = model.encoder(counts)
    z = torch.randn(16, 4)
    library = torch.full((16,), 500.0)
    decoded = model.decoder(z, library)["mean"]
    matrix = torch.eye(4) * 2.0 + torch.randn(4, 4) * 0.3
    offset = torch.randn(4)
    model.transform_latents(matrix, offset)
    new_loc, _ = model.encoder(counts)
    torch.testing.assert_close(new_loc, (loc - offset) @ matrix.t(), rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(model.decoder((z - offset) @ matrix.t(), library)["mean"],
                               decoded, rtol=1e-4, atol=1e-3)


def test_realign_latents_applies_the_kept_map_to_the_model(shift_data):
    _, data = shift_data
    torch.manual_seed(0)
    model = SparseShiftVAE(data.schema, n_latent=4, n_hidden=32)
    z = torch.as_tensor(latent(model, data))
    found = realign_latents(model, data, n_starts=2, steps=50)
    torch.testing.assert_close(torch.as_tensor(latent(model, data)), found.apply(z),
                               rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(model.shift_loc.detach(), found.shift)
    torch.testing.assert_close(model.target_logit.detach(), found.target_logit.clamp(-4, 4))


def test_realign_latents_needs_a_sparse_perturbation_prior(shift_data):
    _, data = shift_data
    for sparsity in ("vae", "ivae"):
        model = SparseShiftVAE(data.schema, n_latent=4, sparsity=sparsity)
        with pytest.raises(ValueError, match="needs a SparseShiftVAE with sparsity 'svae'"):
            realign_latents(model, data)
        with pytest.raises(ValueError, match="needs a SparseShiftVAE with sparsity 'svae'"):
            fit_with_realignment(model, data, max_epochs=4, realign_after=2)


def test_fit_with_realignment_runs_every_epoch_and_checks_its_split(shift_data):
    _, data = shift_data
    torch.manual_seed(0)
    model = SparseShiftVAE(data.schema, n_latent=4, n_hidden=32)
    with pytest.raises(ValueError, match=r"realign_after must be in \[1, max_epochs\)"):
        fit_with_realignment(model, data, max_epochs=4, realign_after=4)
    with pytest.raises(ValueError, match="checkpoint is not supported by fit_with_realignment"):
        fit_with_realignment(model, data, max_epochs=4, realign_after=2, checkpoint="fit.pt")
    history = fit_with_realignment(model, data, max_epochs=5, realign_after=3, n_starts=2,
                                   kl_warmup_epochs=2, **SETTINGS)
    assert history.n_epochs == 5 and len(history.validation_elbo) == 5
    assert history.kl_weight[3:] == [1.0, 1.0]  # no warm-up after the realignment
    assert np.isfinite(history.validation_elbo).all()


def test_fit_restarts_takes_the_realigned_fit(shift_data):
    _, data = shift_data
    model, restarts = fit_restarts(
        lambda: SparseShiftVAE(data.schema, n_latent=4, n_hidden=32), data, 2,
        fit_function=lambda m, d, **kw: fit_with_realignment(m, d, realign_after=2, n_starts=1,
                                                            **kw),
        max_epochs=3, **SETTINGS)
    assert [r.history.n_epochs for r in restarts] == [3, 3]


def test_history_followed_by_joins_epochs_and_shifts_the_kept_epoch():
    first = TrainingHistory(train_elbo=[-3.0, -2.0], validation_elbo=[-3.5, -2.5],
                            kl_weight=[0.5, 1.0], penalties={"a": [1.0, 2.0]}, seconds=2.0)
    later = TrainingHistory(train_elbo=[-1.0], validation_elbo=[-1.5], kl_weight=[1.0],
                            best_epoch=0, stopped_early=True, seconds=1.0)
    joined = first.followed_by(later)
    assert joined.train_elbo == [-3.0, -2.0, -1.0]
    assert joined.validation_elbo == [-3.5, -2.5, -1.5]
    assert joined.best_epoch == 2 and joined.stopped_early and joined.seconds == 3.0
    assert joined.penalties["a"][:2] == [1.0, 2.0] and np.isnan(joined.penalties["a"][2])
