"""Identifiability scores: mean correlation coefficient (Pearson / Spearman) and linear R^2."""

from __future__ import annotations

import re

import numpy as np
import pytest

from pyro_causalcell.metrics import correlation_matrix, linear_r2, mean_correlation_coefficient


@pytest.fixture
def true_latents() -> np.ndarray:
    """(2000, 4) independent latents with different scales and means."""
    rng = np.random.default_rng(0)
    return rng.normal(size=(2000, 4)) * [1.0, 2.0, 0.5, 3.0] + [0.0, 1.0, -2.0, 5.0]


# ---------------------------------------------------------------------- MCC
def test_mcc_is_one_for_a_permuted_rescaled_sign_flipped_copy(true_latents):
    perm = np.array([2, 0, 3, 1])
    learned = true_latents[:, perm] * np.array([-3.0, 0.1, 7.0, -0.5]) + 4.0
    score = mean_correlation_coefficient(true_latents, learned, "pearson")
    assert isinstance(score, float)
    assert abs(score - 1.0) < 1e-9


def test_mcc_returns_the_matching_that_undoes_the_permutation(true_latents):
    perm = np.array([2, 0, 3, 1])  # learned column j is true column perm[j]
    learned = -2.0 * true_latents[:, perm]
    score, (rows, cols) = mean_correlation_coefficient(true_latents, learned,
                                                       return_assignment=True)
    assert abs(score - 1.0) < 1e-9
    np.testing.assert_array_equal(rows, np.arange(4))
    np.testing.assert_array_equal(cols, np.argsort(perm))  # true i <-> learned j, perm[j] == i
    np.testing.assert_array_equal(perm[cols], rows)


def test_spearman_mcc_is_one_for_monotone_nonlinear_transforms(true_latents):
    learned = np.column_stack([
        np.exp(true_latents[:, 3]),          # increasing
        -true_latents[:, 0] ** 3,            # decreasing
        np.tanh(true_latents[:, 2]),         # increasing, saturating
        1.0 / (1.0 + np.exp(-true_latents[:, 1])),
    ])
    spearman = mean_correlation_coefficient(true_latents, learned, "spearman")
    pearson = mean_correlation_coefficient(true_latents, learned, "pearson")
    assert abs(spearman - 1.0) < 1e-9
    assert pearson < 0.99  # the Pearson score does see the nonlinearity
    _, (rows, cols) = mean_correlation_coefficient(true_latents, learned, "spearman",
                                                   return_assignment=True)
    np.testing.assert_array_equal(cols[np.argsort(rows)], [1, 3, 2, 0])


def test_mcc_is_near_zero_for_independent_noise():
    rng = np.random.default_rng(1)
    true, noise = rng.normal(size=(5000, 3)), rng.normal(size=(5000, 3))
    for method in ("pearson", "spearman"):
        score = mean_correlation_coefficient(true, noise, method)
        assert 0.0 <= score < 0.1


def test_mcc_matches_min_k_pairs_when_dimensions_differ(true_latents):
    # two true dimensions hidden among five learned ones: every true one is matched
    rng = np.random.default_rng(2)
    learned = np.column_stack([rng.normal(size=2000), true_latents[:, 1], rng.normal(size=2000),
                               -true_latents[:, 0], rng.normal(size=2000)])
    score, (rows, cols) = mean_correlation_coefficient(true_latents[:, :2], learned,
                                                       return_assignment=True)
    assert abs(score - 1.0) < 1e-9
    np.testing.assert_array_equal(cols[np.argsort(rows)], [3, 1])
    # more true than learned dimensions: only min(k_true, k_learned) = 1 pair is averaged
    assert abs(mean_correlation_coefficient(true_latents, true_latents[:, [2]]) - 1.0) < 1e-9


def test_correlation_matrix_shape_values_and_constant_columns(true_latents):
    learned = np.column_stack([true_latents[:, 0], np.ones(2000), -true_latents[:, 1]])
    corr = correlation_matrix(true_latents, learned)
    assert corr.shape == (4, 3)
    assert corr[0, 0] == pytest.approx(1.0) and corr[1, 2] == pytest.approx(-1.0)
    np.testing.assert_array_equal(corr[:, 1], 0.0)  # a constant column correlates 0, not NaN
    reference = np.corrcoef(np.column_stack([true_latents, learned[:, [0, 2]]]).T)[:4, 4:]
    np.testing.assert_allclose(corr[:, [0, 2]], reference, atol=1e-12)


# ---------------------------------------------------------------------- linear R^2
def test_linear_r2_is_one_for_an_invertible_linear_map(true_latents):
    rng = np.random.default_rng(3)
    mixing = rng.normal(size=(4, 4)) + 3 * np.eye(4)
    assert abs(np.linalg.det(mixing)) > 1e-3
    learned = true_latents @ mixing + rng.normal(size=4)
    assert linear_r2(true_latents, learned) == pytest.approx(1.0, abs=1e-9)
    # a lower-dimensional learned space cannot explain everything
    assert linear_r2(true_latents, learned[:, :2]) < 0.9


def test_linear_r2_is_near_zero_for_noise():
    rng = np.random.default_rng(4)
    true, noise = rng.normal(size=(5000, 3)), rng.normal(size=(5000, 3))
    r2 = linear_r2(true, noise)
    assert isinstance(r2, float)
    assert 0.0 <= r2 < 0.01


# ---------------------------------------------------------------------- errors
@pytest.mark.parametrize("fn", [mean_correlation_coefficient, linear_r2, correlation_matrix])
def test_shape_mismatch_names_both_shapes(fn):
    with pytest.raises(ValueError, match=re.escape("(100, 3) and (99, 3)")):
        fn(np.zeros((100, 3)), np.zeros((99, 3)))
    with pytest.raises(ValueError, match=re.escape("(100,) and (100, 2)")):
        fn(np.zeros(100), np.zeros((100, 2)))


def test_unknown_method_is_refused(true_latents):
    with pytest.raises(ValueError, match="method='kendall'; choose 'pearson' or 'spearman'"):
        mean_correlation_coefficient(true_latents, true_latents, "kendall")
    with pytest.raises(ValueError, match="kendall"):
        correlation_matrix(true_latents, true_latents, method="kendall")
