"""The sparse-shift training schedule users get from sparse_shift_schedule and causalcell fit."""

import pytest

from pyro_causalcell import CellData, SparseShiftVAE, sparse_shift_schedule
from pyro_causalcell.simulate.sparse_shift import sparse_shift


@pytest.mark.parametrize("n_cells, epochs, batch", [
    (20_000, 300, 256),   # the study's design: 80 perturbations x 250 training cells
    (4_000, 750, 128),    # 40 x 100 cells: as many optimiser steps in batches of 128
    (12_800, 469, 256),   # 160 x 80 cells
])
def test_schedule_of_the_sweeps_designs(n_cells, epochs, batch):
    schedule = sparse_shift_schedule(n_cells)
    assert schedule == dict(max_epochs=epochs, batch_size=batch, lr=0.01, kl_warmup_epochs=50,
                            free_bits=0.5, realign_after=round(2 * epochs / 3))
    assert sparse_shift_schedule(n_cells, realign=False) == {
        k: v for k, v in schedule.items() if k != "realign_after"}
    assert SparseShiftVAE.default_schedule(n_cells) == schedule


def test_schedule_reads_the_cells_of_cell_data():
    adata = sparse_shift(n_latent=3, n_perturbations=4, n_cells_per_perturbation=30, n_genes=40,
                         seed=0)
    data = CellData.from_anndata(adata, perturbation_key="perturbation")
    assert sparse_shift_schedule(data) == sparse_shift_schedule(data.n_cells)
    assert sparse_shift_schedule(data)["batch_size"] == 64  # 120 cells: the smallest batch


@pytest.mark.parametrize("n_cells", [0, -5, 2.5, "many", True])
def test_a_bad_number_of_cells_is_named(n_cells):
    with pytest.raises(ValueError, match=r"n_cells must be a positive integer \(or a "
                                         rf"CellData\), got {n_cells!r}"):
        sparse_shift_schedule(n_cells)
