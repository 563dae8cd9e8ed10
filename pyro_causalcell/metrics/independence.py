r"""Kernel independence tests: HSIC with a permutation p-value, and a conditional test.

Used to check that a latent block is independent of a covariate it should not encode (for
example ``z_x`` of the treatment), marginally or given another covariate.

The HSIC maths is :mod:`pyro_causalcell.kernels` (shared with the models' differentiable
penalties); this module adds data handling, bandwidths and permutation p-values.

The Hilbert-Schmidt independence criterion (Gretton et al., 2005) of samples
:math:`(x_i, y_i)_{i=1}^n` with kernel matrices :math:`K, L` and centring
:math:`H = I - \tfrac1n \mathbf{1}\mathbf{1}^\top` is estimated by the (biased) V-statistic

.. math:: \widehat{\mathrm{HSIC}} = \frac{1}{n^2} \operatorname{tr}(K H L H),

which is zero in the population iff :math:`x \perp y` for characteristic kernels such as the
Gaussian kernel :math:`k(x, x') = \exp(-\lVert x - x' \rVert^2 / 2\sigma^2)` used here, with
:math:`\sigma` the median pairwise distance (median heuristic). Everything is held as
``(n, n)`` matrices: time and memory grow as :math:`n^2` (:math:`n^3` for the conditional test
on continuous covariates), so subsample to a few thousand cells.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import torch
from scipy.spatial.distance import pdist

from .. import kernels

__all__ = ["IndependenceTest", "conditional_independence_test", "gaussian_kernel", "hsic",
           "hsic_test", "kernel_ridge_residuals", "median_bandwidth"]

_MEDIAN_SUBSAMPLE = 1000


class IndependenceTest(NamedTuple):
    """Result of a permutation test."""

    statistic: float
    pvalue: float


def _is_categorical(values: np.ndarray) -> bool:
    return values.dtype.kind in "biuOSU"


def _as_samples(name: str, values, n: int | None = None) -> np.ndarray:
    """``(n,)`` or ``(n, d)`` numeric values, or ``(n,)`` categories (one-hot), as ``(n, d)``."""
    values = np.asarray(values)
    if values.ndim == 1 and values.dtype.kind in "OSU":
        codes = np.unique(values, return_inverse=True)[1].ravel()
        values = np.eye(codes.max() + 1)[codes]
    elif values.dtype.kind in "OSU":
        raise ValueError(f"{name}: categorical values must be a 1-D array")
    values = values.astype(float)
    if values.ndim == 1:
        values = values[:, None]
    if values.ndim != 2 or len(values) < 2:
        raise ValueError(f"{name} must be a (n,) or (n, d) array with n >= 2; got shape "
                         f"{values.shape}")
    if n is not None and len(values) != n:
        raise ValueError(f"{name} has {len(values)} samples; expected {n} (one per cell)")
    if not np.isfinite(values).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    return values


def median_bandwidth(values: np.ndarray, seed: int = 0) -> float:
    """Median of the nonzero pairwise Euclidean distances (on at most 1000 random samples).

    Parameters
    ----------
    values : (n, d) array

    Returns
    -------
    float
        1.0 when all samples coincide.
    """
    values = np.asarray(values, dtype=float).reshape(len(values), -1)
    if len(values) > _MEDIAN_SUBSAMPLE:
        pick = np.random.default_rng(seed).choice(len(values), _MEDIAN_SUBSAMPLE, replace=False)
        values = values[pick]
    distances = pdist(values)
    distances = distances[distances > 0]
    return float(np.median(distances)) if distances.size else 1.0


def gaussian_kernel(values: np.ndarray, bandwidth: float | None = None) -> np.ndarray:
    r"""``(n, n)`` Gaussian kernel matrix :math:`\exp(-\lVert x_i - x_j\rVert^2 / 2\sigma^2)`
    (:func:`pyro_causalcell.kernels.gaussian_kernel` in float64).

    Parameters
    ----------
    values : (n, d) array
    bandwidth : float, optional
        :math:`\sigma`; default the median heuristic (:func:`median_bandwidth`).
    """
    values = np.asarray(values, dtype=float).reshape(len(values), -1)
    sigma = median_bandwidth(values) if bandwidth is None else float(bandwidth)
    return kernels.gaussian_kernel(torch.from_numpy(values), sigma).numpy()


def hsic(x, y) -> float:
    r"""Biased HSIC estimate :math:`\frac{1}{n^2}\operatorname{tr}(KHLH)` with Gaussian kernels.

    Parameters
    ----------
    x : (n,) or (n, d_x) array
        Numeric values, or a 1-D array of categories (one-hot encoded).
    y : (n,) or (n, d_y) array

    Returns
    -------
    float
        Non-negative; 0 for independent samples in the large-sample limit.
    """
    x = _as_samples("x", x)
    y = _as_samples("y", y, len(x))
    return float(kernels.hsic(torch.from_numpy(gaussian_kernel(x)),
                              torch.from_numpy(gaussian_kernel(y))))


def _check_permutations(n_permutations) -> int:
    if int(n_permutations) != n_permutations or n_permutations < 1:
        raise ValueError(f"n_permutations must be an integer >= 1, got {n_permutations}")
    return int(n_permutations)


def _pvalue(statistic: float, null: np.ndarray) -> float:
    # the observed statistic counts as one permutation: exact level under exchangeability;
    # a relative tolerance keeps permutations equal to the observed one from being missed
    exceed = np.sum(null >= statistic - 1e-12 * max(abs(statistic), 1e-300))
    return float((1 + exceed) / (1 + len(null)))


def hsic_test(x, y, n_permutations: int = 500, seed: int = 0) -> IndependenceTest:
    r"""Permutation test of :math:`x \perp y` with the HSIC statistic.

    The null distribution is that of :func:`hsic` with the samples of ``y`` permuted; the
    p-value is :math:`(1 + \#\{\text{permuted} \ge \text{observed}\}) / (1 + B)` for
    :math:`B` permutations, valid (uniform or conservative) under independence.

    Parameters
    ----------
    x : (n,) or (n, d_x) array
    y : (n,) or (n, d_y) array
    n_permutations : int
    seed : int

    Returns
    -------
    IndependenceTest
        ``(statistic, pvalue)``; the smallest attainable p-value is ``1 / (1 + n_permutations)``.
    """
    x = _as_samples("x", x)
    y = _as_samples("y", y, len(x))
    n_permutations = _check_permutations(n_permutations)
    return _permutation_hsic(x, y, n_permutations, np.random.default_rng(seed))


def _permutation_hsic(x, y, n_permutations, rng) -> IndependenceTest:
    n = len(x)
    k_centred = kernels.centred(torch.from_numpy(gaussian_kernel(x)))
    l_kernel = torch.from_numpy(gaussian_kernel(y))
    statistic = float(kernels.hsic_of_centred(k_centred, l_kernel))
    null = np.empty(n_permutations)
    for b in range(n_permutations):
        perm = torch.from_numpy(rng.permutation(n))
        null[b] = float(kernels.hsic_of_centred(k_centred, l_kernel[perm][:, perm]))
    return IndependenceTest(statistic, _pvalue(statistic, null))


# ---------------------------------------------------------------------- conditional test
def _strata(x: np.ndarray) -> list[np.ndarray]:
    x = np.asarray(x)
    if x.ndim == 1:
        codes = np.unique(x, return_inverse=True)[1].ravel()
    else:
        codes = np.unique(x, axis=0, return_inverse=True)[1].ravel()
    return [np.flatnonzero(codes == c) for c in range(codes.max() + 1)]


def _stratified_test(z, t, strata, n_permutations, rng) -> IndependenceTest:
    n = len(z)
    sigma_z, sigma_t = median_bandwidth(z), median_bandwidth(t)
    blocks = []
    for members in strata:
        if len(members) < 2:
            continue  # a single cell carries no information on dependence
        k_centred = kernels.centred(torch.from_numpy(gaussian_kernel(z[members], sigma_z)))
        l_kernel = torch.from_numpy(gaussian_kernel(t[members], sigma_t))
        blocks.append((k_centred, l_kernel, len(members) / n))
    if not blocks:
        raise ValueError("every stratum of x holds a single cell; the stratified test needs "
                         "repeated values of x (use method='residual' for continuous x)")

    def statistic(perms=None) -> float:
        total = 0.0
        for i, (k_centred, l_kernel, weight) in enumerate(blocks):
            if perms is not None:
                perm = torch.from_numpy(perms[i])
                l_kernel = l_kernel[perm][:, perm]
            total += weight * float(kernels.hsic_of_centred(k_centred, l_kernel))
        return total

    observed = statistic()
    null = np.array([statistic([rng.permutation(len(b[1])) for b in blocks])
                     for _ in range(n_permutations)])
    return IndependenceTest(observed, _pvalue(observed, null))


def kernel_ridge_residuals(x: np.ndarray, y: np.ndarray, ridge: float | None = None,
                           bandwidth: float | None = None) -> np.ndarray:
    r"""Residuals of ``y`` after Gaussian-kernel ridge regression on ``x``.

    With :math:`K = U \Lambda U^\top` the kernel matrix of ``x`` and ridge :math:`\alpha`, the
    fitted values are :math:`K (K + \alpha I)^{-1} y` (of the column-centred ``y``). Without a
    given ridge, :math:`\alpha` is chosen from a grid by exact leave-one-out error, which
    the eigendecomposition makes cheap.

    Parameters
    ----------
    x : (n, d_x) array
    y : (n, d_y) array
    ridge : float, optional
        :math:`\alpha` (> 0).
    bandwidth : float, optional
        Kernel bandwidth on ``x``; default the median heuristic.

    Returns
    -------
    (n, d_y) array
    """
    x = _as_samples("x", x)
    y = _as_samples("y", y, len(x))
    n = len(x)
    y = y - y.mean(0)
    eigenvalues, vectors = np.linalg.eigh(gaussian_kernel(x, bandwidth))
    eigenvalues = np.maximum(eigenvalues, 0.0)
    projected = vectors.T @ y
    if ridge is None:
        grid = n * np.logspace(-6, 0, 25)
    elif not ridge > 0:
        raise ValueError(f"ridge must be > 0, got {ridge}")
    else:
        grid = np.array([float(ridge)])
    best, best_error = None, np.inf
    for alpha in grid:
        shrink = alpha / (eigenvalues + alpha)            # residual operator, eigenbasis
        residual = vectors @ (shrink[:, None] * projected)
        leverage = (vectors ** 2) @ (1.0 - shrink)        # diagonal of the hat matrix
        error = np.sum((residual / np.maximum(1.0 - leverage, 1e-12)[:, None]) ** 2)
        if error < best_error:
            best, best_error = residual, error
    return best


def conditional_independence_test(z, t, x, method: str = "auto", n_permutations: int = 500,
                                  seed: int = 0, ridge: float | None = None) -> IndependenceTest:
    r"""Kernel permutation test of :math:`z \perp t \mid x`.

    Two procedures, picked by ``method``:

    ``"stratified"`` (discrete ``x``)
        The statistic is the stratum-size-weighted sum of within-stratum HSIC between ``z``
        and ``t`` (bandwidths from all cells), and the null is obtained by permuting ``t``
        *within* the strata of equal ``x``. Under :math:`z \perp t \mid x` the permuted data
        have the same distribution as the observed, so the p-value is exact.
    ``"residual"`` (continuous ``x``)
        ``z`` and ``t`` are each regressed on ``x`` by Gaussian kernel ridge regression
        (ridge chosen by leave-one-out, :func:`kernel_ridge_residuals`) and the residuals are
        tested with :func:`hsic_test`. The p-value is approximate: it is valid when the
        dependence on ``x`` is additive (``z = f(x) + noise`` with noise independent of ``x``,
        likewise for ``t``) and the regressions are accurate; otherwise left-over dependence
        on ``x`` can inflate false positives.

    ``"auto"`` uses ``"stratified"`` when ``x`` holds integers, booleans or strings, and
    ``"residual"`` for floating-point ``x``.

    Parameters
    ----------
    z : (n,) or (n, d_z) array
    t : (n,) or (n, d_t) array
        Numeric, or a 1-D array of categories (one-hot encoded).
    x : (n,) or (n, d_x) array
        The conditioning variable.
    method : {"auto", "stratified", "residual"}
    n_permutations : int
    seed : int
    ridge : float, optional
        Fixed kernel ridge for ``"residual"`` (default: leave-one-out choice).

    Returns
    -------
    IndependenceTest
        ``(statistic, pvalue)``.
    """
    if method not in ("auto", "stratified", "residual"):
        raise ValueError(f"method={method!r}; choose 'auto', 'stratified' or 'residual'")
    z = _as_samples("z", z)
    t = _as_samples("t", t, len(z))
    x_raw = np.asarray(x)
    if len(x_raw) != len(z) or x_raw.ndim not in (1, 2):
        raise ValueError(f"x must be a (n,) or (n, d) array with n = {len(z)}; got shape "
                         f"{x_raw.shape}")
    n_permutations = _check_permutations(n_permutations)
    rng = np.random.default_rng(seed)
    if method == "auto":
        method = "stratified" if _is_categorical(x_raw) else "residual"
    if method == "stratified":
        return _stratified_test(z, t, _strata(x_raw), n_permutations, rng)
    x_values = _as_samples("x", x_raw, len(z))
    return _permutation_hsic(kernel_ridge_residuals(x_values, z, ridge),
                             kernel_ridge_residuals(x_values, t, ridge), n_permutations, rng)
