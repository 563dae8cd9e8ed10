"""Kernel independence: HSIC, its permutation test, and the conditional-independence test."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import kstest

from pyro_causalcell.metrics.independence import (
    conditional_independence_test,
    gaussian_kernel,
    hsic,
    hsic_test,
    kernel_ridge_residuals,
    median_bandwidth,
)


# ---------------------------------------------------------------------- HSIC
def test_hsic_matches_the_trace_formula():
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(30, 2)), rng.normal(size=30)
    n = 30
    centring = np.eye(n) - np.ones((n, n)) / n
    k, l_ = gaussian_kernel(x), gaussian_kernel(y[:, None])
    expected = np.trace(k @ centring @ l_ @ centring) / n ** 2
    assert hsic(x, y) == pytest.approx(expected, rel=1e-10)
    # the median heuristic: half the nonzero distances are below the bandwidth
    distances = np.abs(y[:, None] - y[None, :])[np.triu_indices(n, 1)]
    assert np.mean(distances < median_bandwidth(y[:, None])) == pytest.approx(0.5, abs=0.01)


def test_hsic_is_larger_for_dependent_samples():
    rng = np.random.default_rng(1)
    x = rng.normal(size=200)
    assert hsic(x, x ** 2) > 10 * hsic(x, rng.normal(size=200)) > 0.0


def test_hsic_pvalues_are_roughly_uniform_under_independence():
    pvalues = []
    for r in range(40):
        rng = np.random.default_rng(100 + r)
        x, y = rng.normal(size=100), rng.normal(size=(100, 2))
        pvalues.append(hsic_test(x, y, n_permutations=200, seed=r).pvalue)
    pvalues = np.array(pvalues)
    assert np.mean(pvalues < 0.05) <= 0.15
    assert 0.35 < pvalues.mean() < 0.65
    assert kstest(pvalues, "uniform").pvalue > 0.01


def test_hsic_pvalue_is_tiny_under_nonlinear_dependence():
    rng = np.random.default_rng(2)
    x = rng.normal(size=150)
    y = x ** 2 + 0.3 * rng.normal(size=150)  # uncorrelated with x, yet dependent
    assert abs(np.corrcoef(x, y)[0, 1]) < 0.2
    statistic, pvalue = hsic_test(x, y, n_permutations=200, seed=0)
    assert statistic > 0 and pvalue == pytest.approx(1 / 201)


def test_hsic_test_accepts_categorical_values():
    rng = np.random.default_rng(3)
    t = rng.choice(["ctrl", "drug"], size=120)
    z = np.where(t == "drug", 1.5, 0.0) + rng.normal(size=120)
    assert hsic_test(z, t, n_permutations=100).pvalue < 0.05
    assert hsic_test(rng.normal(size=120), t, n_permutations=100).pvalue > 0.05


# ---------------------------------------------------------------------- conditional test
def continuous_world(seed: int, n: int = 200, direct: float = 0.0):
    """x confounds z and t; ``direct`` adds an edge t -> z."""
    rng = np.random.default_rng(seed)
    x = rng.normal(size=n)
    t = x ** 2 + 0.3 * rng.normal(size=n)
    z = np.sin(2 * x) + direct * t + 0.3 * rng.normal(size=n)
    return z, t, x


def test_ci_residual_test_on_continuous_x():
    z, t, x = continuous_world(0)
    assert hsic_test(z, t, n_permutations=200).pvalue < 0.05  # marginally dependent
    assert conditional_independence_test(z, t, x, n_permutations=200).pvalue > 0.05
    z, t, x = continuous_world(0, direct=0.5)
    assert conditional_independence_test(z, t, x, n_permutations=200).pvalue < 0.01


def test_ci_residual_test_is_roughly_calibrated():
    pvalues = np.array([conditional_independence_test(*continuous_world(10 + r, n=150),
                                                      n_permutations=100, seed=r).pvalue
                        for r in range(20)])
    assert np.mean(pvalues < 0.05) <= 0.2 and pvalues.mean() > 0.3


def test_ci_stratified_test_on_discrete_x():
    rng = np.random.default_rng(4)
    n = 300
    x = rng.choice(["line_a", "line_b", "line_c"], size=n)
    level = {"line_a": 0.0, "line_b": 2.0, "line_c": 4.0}
    shift = np.array([level[v] for v in x])
    t = shift + 0.5 * rng.normal(size=n)
    z = -shift[:, None] + 0.5 * rng.normal(size=(n, 2))
    assert hsic_test(z, t, n_permutations=200).pvalue < 0.05
    independent = conditional_independence_test(z, t, x, n_permutations=200)
    assert independent.pvalue > 0.05
    dependent = conditional_independence_test(z + 0.5 * t[:, None], t, x, n_permutations=200)
    assert dependent.pvalue < 0.01 and dependent.statistic > independent.statistic
    # integer codes pick the same stratified test as the strings
    codes = np.unique(x, return_inverse=True)[1]
    assert conditional_independence_test(z, t, codes, n_permutations=200) == independent


def test_kernel_ridge_residuals_remove_a_smooth_function():
    rng = np.random.default_rng(5)
    x = rng.uniform(-2, 2, size=(200, 1))
    y = np.column_stack([np.sin(2 * x[:, 0]), x[:, 0] ** 2]) + 0.1 * rng.normal(size=(200, 2))
    residual = kernel_ridge_residuals(x, y)
    assert residual.shape == (200, 2)
    assert np.all(residual.std(0) < 0.15)


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="expected 5"):
        hsic(np.zeros(5), np.zeros(4))
    with pytest.raises(ValueError, match="NaN"):
        hsic_test(np.array([0.0, np.nan, 1.0]), np.zeros(3))
    with pytest.raises(ValueError, match="n_permutations"):
        hsic_test(np.zeros(5), np.zeros(5), n_permutations=0)
    with pytest.raises(ValueError, match="method"):
        conditional_independence_test(np.zeros(5), np.zeros(5), np.zeros(5), method="magic")
    with pytest.raises(ValueError, match="single cell"):
        conditional_independence_test(np.arange(5.0), np.arange(5.0), np.arange(5),
                                      method="stratified")
    with pytest.raises(ValueError, match="x must be"):
        conditional_independence_test(np.zeros(5), np.zeros(5), np.zeros(4))
