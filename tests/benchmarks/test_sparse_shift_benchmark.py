"""SparseShiftBenchmark encodes the simulated screen as a user would."""

from __future__ import annotations

import pytest

from pyro_causalcell.benchmarks.sparse_shift import SparseShiftBenchmark

TINY = dict(models=["sVAE+"], n_latent=3, n_perturbations=6, n_cells_per_perturbation=30,
            n_genes=40, n_held_out=2, max_epochs=2, transfer_epochs=1, kl_warmup_epochs=1,
            n_importance_samples=2, n_hidden=16, seed=0)


@pytest.mark.parametrize("n_control_cells", [40, 0])
def test_control_cells_are_controls_not_a_perturbation(n_control_cells):
    bench = SparseShiftBenchmark(**TINY, simulation=dict(n_control_cells=n_control_cells))
    table = bench.run(log=lambda _: None)
    model = bench.fitted["sVAE+"]["model"]
    # the row counts the latents the model does not use (Burda et al.'s activity < 0.01)
    activity = bench.fitted["sVAE+"]["latent"].var(axis=0)
    assert table.loc["sVAE+", "n_inactive_latents"] == int((activity < 0.01).sum())
    # the control cells follow the base N(0, I); they get no shift or targets of their own
    assert "control" not in model.schema.perturbations
    assert model.schema.control == ("control" if n_control_cells else None)
    assert len(model.schema.perturbations) == TINY["n_perturbations"]
