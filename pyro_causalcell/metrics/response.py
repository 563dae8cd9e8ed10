r"""Scores of predicted perturbation responses against observed cells.

A model predicts the cells of a perturbation (e.g. counterfactuals of control cells); the
prediction is compared with the observed perturbed cells by the :math:`R^2` of their mean
expression, on all genes and on the genes the perturbation changes most, and by the energy
distance between the two populations of cells.

Inputs are ``(n_cells, n_genes)`` matrices (NumPy, SciPy sparse or torch tensors) of the same
expression scale, typically normalised log-expression.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.sparse as sp
from scipy.spatial.distance import cdist

__all__ = ["ResponseR2", "energy_distance", "mean_expression_r2", "response_r2", "top_de_genes"]


class ResponseR2(NamedTuple):
    """:math:`R^2` of predicted against observed mean expression."""

    all_genes: float
    top_genes: float
    genes: np.ndarray  # indices of the top differentially expressed genes used


def _to_numpy(values):
    if hasattr(values, "detach"):  # torch tensor
        values = values.detach().cpu().numpy()
    return values


def _matrix(name: str, values, n_genes: int | None = None):
    """``(n_cells, n_genes)`` dense or sparse matrix, validated."""
    values = _to_numpy(values)
    if not sp.issparse(values):
        values = np.asarray(values, dtype=float)
        if values.ndim != 2:
            raise ValueError(f"{name} must be a (n_cells, n_genes) matrix; got shape "
                             f"{values.shape}")
        finite = np.isfinite(values).all()
    else:
        finite = np.isfinite(values.data).all()
    if values.shape[0] == 0:
        raise ValueError(f"{name} has no cells")
    if not finite:
        raise ValueError(f"{name} contains NaN or infinite values")
    if n_genes is not None and values.shape[1] != n_genes:
        raise ValueError(f"{name} has {values.shape[1]} genes; expected {n_genes}")
    return values


def _means(name: str, values, n_genes: int | None = None) -> np.ndarray:
    """Per-gene means of a ``(n_cells, n_genes)`` matrix; a 1-D input is taken as the means."""
    raw = _to_numpy(values)
    if not sp.issparse(raw) and np.ndim(raw) == 1:
        means = np.asarray(raw, dtype=float)
        if not np.isfinite(means).all():
            raise ValueError(f"{name} contains NaN or infinite values")
        if n_genes is not None and len(means) != n_genes:
            raise ValueError(f"{name} has {len(means)} genes; expected {n_genes}")
        return means
    return np.asarray(_matrix(name, raw, n_genes).mean(0), dtype=float).ravel()


def _gene_index(genes, n_genes: int) -> np.ndarray:
    genes = np.asarray(genes)
    if genes.dtype == bool:
        if genes.shape != (n_genes,):
            raise ValueError(f"a boolean gene mask must have shape ({n_genes},); got "
                             f"{genes.shape}")
        genes = np.flatnonzero(genes)
    if genes.ndim != 1 or not np.issubdtype(genes.dtype, np.integer):
        raise ValueError("genes must be integer gene indices or a boolean mask")
    if genes.size and (genes.min() < -n_genes or genes.max() >= n_genes):
        raise ValueError(f"gene indices must lie in [0, {n_genes - 1}]")
    return genes


def _r2(predicted: np.ndarray, observed: np.ndarray) -> float:
    if len(observed) < 2:
        raise ValueError(f"R^2 needs at least 2 genes; got {len(observed)}")
    total = np.sum((observed - observed.mean()) ** 2)
    residual = np.sum((observed - predicted) ** 2)
    if total == 0:
        return 1.0 if residual == 0 else 0.0
    return float(1.0 - residual / total)


def mean_expression_r2(predicted, observed, genes=None) -> float:
    r"""Coefficient of determination of the observed per-gene means by the predicted ones.

    .. math::
        R^2 = 1 - \frac{\sum_g (\bar y_g - \bar{\hat y}_g)^2}{\sum_g (\bar y_g - \bar{\bar y})^2},

    with :math:`\bar y_g, \bar{\hat y}_g` the mean of gene :math:`g` over observed and predicted
    cells and :math:`\bar{\bar y}` the mean over genes of :math:`\bar y_g` (scikit-learn's
    ``r2_score(observed_means, predicted_means)``). 1 for identical means; can be negative.

    Parameters
    ----------
    predicted : (n_predicted, n_genes) matrix or (n_genes,) means
    observed : (n_observed, n_genes) matrix or (n_genes,) means
    genes : int array or (n_genes,) bool mask, optional
        Restrict to these genes.

    Returns
    -------
    float
    """
    observed_means = _means("observed", observed)
    predicted_means = _means("predicted", predicted, len(observed_means))
    if genes is not None:
        index = _gene_index(genes, len(observed_means))
        observed_means, predicted_means = observed_means[index], predicted_means[index]
    return _r2(predicted_means, observed_means)


def top_de_genes(control, treated, k: int, *, pseudocount: float = 1.0) -> np.ndarray:
    r"""The ``k`` genes with the largest absolute log-fold change of means.

    .. math:: \mathrm{LFC}_g = \log(\bar y^{\,\mathrm{treated}}_g + c)
        - \log(\bar y^{\,\mathrm{control}}_g + c)

    with pseudocount :math:`c`, for non-negative expression (counts or normalised values).

    Parameters
    ----------
    control : (n_control, n_genes) matrix or (n_genes,) means
    treated : (n_treated, n_genes) matrix or (n_genes,) means
    k : int
        ``1 <= k <= n_genes``.
    pseudocount : float
        > 0.

    Returns
    -------
    (k,) int array
        Gene indices, largest absolute change first (ties by gene index).
    """
    control_means = _means("control", control)
    treated_means = _means("treated", treated, len(control_means))
    if int(k) != k or not 1 <= k <= len(control_means):
        raise ValueError(f"k must be an integer in [1, {len(control_means)}], got {k}")
    if not pseudocount > 0:
        raise ValueError(f"pseudocount must be > 0, got {pseudocount}")
    if min(control_means.min(), treated_means.min()) + pseudocount <= 0:
        raise ValueError("mean expression + pseudocount must be positive; top_de_genes needs "
                         "non-negative expression")
    change = np.abs(np.log(treated_means + pseudocount) - np.log(control_means + pseudocount))
    return np.argsort(-change, kind="stable")[:int(k)]


def response_r2(predicted, observed, control, top_k: int = 50, *,
                pseudocount: float = 1.0) -> ResponseR2:
    """:math:`R^2` of mean expression on all genes and on the top-k DE genes of the response.

    The top genes are those changed most between ``control`` and ``observed``
    (:func:`top_de_genes`), i.e. by the true response, as in scGen and CPA.

    Parameters
    ----------
    predicted : (n_predicted, n_genes) matrix
        Predicted perturbed cells.
    observed : (n_observed, n_genes) matrix
        Observed perturbed cells.
    control : (n_control, n_genes) matrix
        Observed control cells.
    top_k : int
        Number of DE genes (clipped to the number of genes).
    pseudocount : float

    Returns
    -------
    ResponseR2
        ``(all_genes, top_genes, genes)``.
    """
    observed_means = _means("observed", observed)
    n_genes = len(observed_means)
    predicted_means = _means("predicted", predicted, n_genes)
    control_means = _means("control", control, n_genes)
    genes = top_de_genes(control_means, observed_means, min(int(top_k), n_genes),
                         pseudocount=pseudocount)
    return ResponseR2(_r2(predicted_means, observed_means),
                      _r2(predicted_means[genes], observed_means[genes]), genes)


def _distance_sum(a: np.ndarray, b: np.ndarray, chunk_size: int) -> float:
    total = 0.0
    for start in range(0, len(a), chunk_size):
        total += cdist(a[start:start + chunk_size], b).sum()
    return total


def energy_distance(x, y, *, chunk_size: int | None = None) -> float:
    r"""Energy distance between two populations of cells (Székely and Rizzo).

    .. math::
        \mathcal{E}(X, Y) = 2\,\mathbb{E}\lVert X - Y\rVert - \mathbb{E}\lVert X - X'\rVert
        - \mathbb{E}\lVert Y - Y'\rVert

    with Euclidean distances and expectations over the empirical distributions (V-statistic,
    all pairs including each point with itself), so it is exactly 0 for identical samples,
    non-negative, and 0 in the population only for equal distributions. This is the square of
    the value ``scipy.stats.energy_distance`` returns in one dimension. Exact, computed over
    row chunks so that at most ``chunk_size * max(n_x, n_y)`` distances are held at once.

    Parameters
    ----------
    x : (n_x, n_features) matrix
        E.g. predicted cells (genes or a PCA embedding).
    y : (n_y, n_features) matrix
        E.g. observed cells.
    chunk_size : int, optional
        Rows per chunk (default: about 2**24 distances per chunk).

    Returns
    -------
    float
    """
    x = _matrix("x", x)
    y = _matrix("y", y, x.shape[1])
    x = x.toarray() if sp.issparse(x) else x
    y = y.toarray() if sp.issparse(y) else y
    if chunk_size is None:
        chunk_size = max(1, 2 ** 24 // max(len(x), len(y)))
    elif int(chunk_size) != chunk_size or chunk_size < 1:
        raise ValueError(f"chunk_size must be an integer >= 1, got {chunk_size}")
    chunk_size = int(chunk_size)
    between = _distance_sum(x, y, chunk_size) / (len(x) * len(y))
    within_x = _distance_sum(x, x, chunk_size) / len(x) ** 2
    within_y = _distance_sum(y, y, chunk_size) / len(y) ** 2
    return float(max(2.0 * between - within_x - within_y, 0.0))
