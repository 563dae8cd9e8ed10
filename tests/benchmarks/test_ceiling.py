"""supervised_ceiling: how well the true latents can be read from the counts."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse
import torch

from pyro_causalcell.benchmarks import supervised_ceiling


def counts_of(z: np.ndarray, used: int, seed: int = 0) -> np.ndarray:
    """Poisson counts of 30 genes driven by the first ``used`` latents only."""
    rng = np.random.default_rng(seed)
    weights = rng.normal(size=(used, 30))
    return rng.poisson(200 * np.exp(0.5 * z[:, :used] @ weights) / 5)


@pytest.mark.parametrize("seed", [0, 1])
def test_latents_the_counts_carry_are_read_and_others_are_not(seed):
    z = np.random.default_rng(seed + 10).normal(size=(1200, 3))
    counts = counts_of(z, used=2, seed=seed)
    torch.manual_seed(5)
    expected = torch.rand(2)
    torch.manual_seed(5)
    r = supervised_ceiling(scipy.sparse.csr_matrix(counts), z, epochs=40, seed=seed)
    torch.testing.assert_close(torch.rand(2), expected)  # the global generator left alone
    assert r.shape == (3,)
    assert r[:2].min() > 0.9  # deep counts of two latents: nearly exact
    assert abs(r[2]) < 0.3  # the third never reaches the counts (test cells: 180)


def test_bad_shapes_are_named():
    with pytest.raises(ValueError, match=r"counts \(50, 4\) and z_true \(40, 2\) must be"):
        supervised_ceiling(np.ones((50, 4)), np.ones((40, 2)))
    with pytest.raises(ValueError, match="at least 20 cells, got 10"):
        supervised_ceiling(np.ones((10, 4)), np.ones((10, 2)))
