"""Response prediction: R^2 of mean expression, top DE genes, energy distance."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from scipy.stats import energy_distance as scipy_energy_distance

from pyro_causalcell.metrics.response import (
    energy_distance,
    mean_expression_r2,
    response_r2,
    top_de_genes,
)


@pytest.fixture
def world():
    """Control and treated log-expression of 100 genes; genes 0-4 respond to the treatment."""
    rng = np.random.default_rng(0)
    base = rng.uniform(0.5, 5.0, size=100)
    effect = np.zeros(100)
    effect[:5] = [2.0, -1.5, 1.0, 3.0, -0.4]
    control = base + 0.3 * rng.normal(size=(300, 100))
    treated = base + effect + 0.3 * rng.normal(size=(250, 100))
    return np.clip(control, 0, None), np.clip(treated, 0, None)


def test_r2_is_one_for_identical_means(world):
    _, treated = world
    # different cells, same per-gene means
    shuffled = treated[::-1] + (treated.mean(0) - treated[::-1].mean(0))
    assert mean_expression_r2(shuffled, treated) == pytest.approx(1.0)
    assert mean_expression_r2(treated.mean(0), treated) == pytest.approx(1.0)  # means given


def test_r2_hand_example():
    observed = np.array([[1.0, 2.0, 3.0], [3.0, 4.0, 5.0]])   # means 2, 3, 4
    predicted = np.array([2.0, 3.0, 6.0])
    # 1 - (0 + 0 + 4) / (1 + 0 + 1)
    assert mean_expression_r2(predicted, observed) == pytest.approx(-1.0)
    assert mean_expression_r2(predicted, observed, genes=[0, 1]) == pytest.approx(1.0)
    assert mean_expression_r2(predicted, observed,
                              genes=np.array([True, True, False])) == pytest.approx(1.0)


def test_r2_accepts_sparse_and_torch(world):
    control, treated = world
    expected = mean_expression_r2(control, treated)
    assert mean_expression_r2(sp.csr_matrix(control), torch.tensor(treated)) \
        == pytest.approx(expected)


def test_top_de_genes_finds_the_responding_genes(world):
    control, treated = world
    genes = top_de_genes(control, treated, 5)
    assert set(genes) == {0, 1, 2, 3, 4}
    # ordered by absolute log-fold change, largest first
    change = np.abs(np.log(treated.mean(0) + 1) - np.log(control.mean(0) + 1))
    np.testing.assert_array_equal(genes, np.argsort(-change)[:5])


def test_response_r2_of_a_perfect_and_a_no_change_prediction(world):
    control, treated = world
    perfect = response_r2(treated, treated, control, top_k=5)
    assert perfect.all_genes == pytest.approx(1.0) and perfect.top_genes == pytest.approx(1.0)
    assert set(perfect.genes) == set(range(5))
    # predicting "no response" scores well on all genes but poorly on the responding ones
    lazy = response_r2(control, treated, control, top_k=5)
    assert lazy.all_genes > 0.8 > 0.0 > lazy.top_genes


def test_energy_distance_zero_for_identical_and_positive_for_shifted():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(150, 4))
    assert energy_distance(x, x) == 0.0
    assert energy_distance(x, x, chunk_size=7) == 0.0
    shifted = x + np.array([1.0, 0.0, 0.0, 0.0])
    assert energy_distance(x, shifted) > 0.3
    same_law = energy_distance(x, rng.normal(size=(200, 4)))
    assert 0.0 < same_law < 0.1 * energy_distance(x, shifted)


def test_energy_distance_matches_scipy_in_one_dimension():
    rng = np.random.default_rng(2)
    x, y = rng.normal(size=80), rng.normal(0.5, 2.0, size=60)
    expected = scipy_energy_distance(x, y) ** 2  # scipy returns the square root
    assert energy_distance(x[:, None], y[:, None], chunk_size=9) == pytest.approx(expected)


def test_bad_inputs_raise(world):
    control, treated = world
    with pytest.raises(ValueError, match="expected 100"):
        mean_expression_r2(treated[:, :99], treated)
    with pytest.raises(ValueError, match="k must be"):
        top_de_genes(control, treated, 101)
    with pytest.raises(ValueError, match="non-negative"):
        top_de_genes(control - 10, treated, 2)
    with pytest.raises(ValueError, match="NaN"):
        mean_expression_r2(np.full((2, 100), np.nan), treated)
    with pytest.raises(ValueError, match="gene indices"):
        mean_expression_r2(treated, treated, genes=[0, 250])
    with pytest.raises(ValueError, match="matrix"):
        energy_distance(np.zeros(5), np.zeros(5))
    with pytest.raises(ValueError, match="genes"):
        energy_distance(np.zeros((5, 2)), np.zeros((5, 3)))
