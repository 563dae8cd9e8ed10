"""How well learned latents recover true ones, up to permutation and rescaling."""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata


def _check_pair(true: np.ndarray, learned: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    true, learned = np.asarray(true, dtype=float), np.asarray(learned, dtype=float)
    if true.ndim != 2 or learned.ndim != 2 or true.shape[0] != learned.shape[0]:
        raise ValueError(f"true and learned must be (n_cells, k) arrays with the same number of "
                         f"rows; got {true.shape} and {learned.shape}")
    return true, learned


def correlation_matrix(true: np.ndarray, learned: np.ndarray,
                       method: str = "pearson") -> np.ndarray:
    """``(k_true, k_learned)`` correlations between columns (``"pearson"`` or ``"spearman"``).

    Constant columns get correlation 0.
    """
    true, learned = _check_pair(true, learned)
    if method == "spearman":
        true, learned = rankdata(true, axis=0), rankdata(learned, axis=0)
    elif method != "pearson":
        raise ValueError(f"method={method!r}; choose 'pearson' or 'spearman'")
    a = true - true.mean(0)
    b = learned - learned.mean(0)
    norm = np.outer(np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=0))
    with np.errstate(invalid="ignore", divide="ignore"):
        corr = (a.T @ b) / norm
    return np.nan_to_num(corr)


def mean_correlation_coefficient(true: np.ndarray, learned: np.ndarray,
                                 method: str = "pearson", return_assignment: bool = False):
    """Mean absolute correlation of true latents with their best-matched learned latents.

    Each true dimension is matched to a distinct learned one by the Hungarian algorithm on
    absolute correlations; the score averages the matched absolute correlations over the
    ``min(k_true, k_learned)`` matched pairs.

    Parameters
    ----------
    true : (n_cells, k_true) array
    learned : (n_cells, k_learned) array
    method : {"pearson", "spearman"}
    return_assignment : bool
        Also return ``(true_index, learned_index)`` of the matching.

    Returns
    -------
    float, or (float, (ndarray, ndarray))
    """
    corr = np.abs(correlation_matrix(true, learned, method))
    rows, cols = linear_sum_assignment(-corr)
    score = float(corr[rows, cols].mean())
    return (score, (rows, cols)) if return_assignment else score


def linear_r2(true: np.ndarray, learned: np.ndarray) -> float:
    """Variance of the true latents explained by a linear map (with intercept) of the learned.

    Returns the mean over true dimensions of the least-squares :math:`R^2`.
    """
    true, learned = _check_pair(true, learned)
    design = np.column_stack([learned, np.ones(len(learned))])
    coef, *_ = np.linalg.lstsq(design, true, rcond=None)
    residual = ((true - design @ coef) ** 2).sum(0)
    total = ((true - true.mean(0)) ** 2).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = 1.0 - residual / total
    return float(np.nan_to_num(r2, nan=0.0).mean())
