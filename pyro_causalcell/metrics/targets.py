r"""Target identification: which latents each perturbation acts on, scored against the truth.

A target graph is a ``(n_perturbations, n_latents)`` boolean matrix whose entry ``(p, k)`` says
that perturbation ``p`` shifts latent ``k``. Learned latents are only identified up to a
permutation, so the learned graph's columns are first matched to the true latents
(:func:`match_latents`) and reordered; the learned graph is then scored as a binary classifier of
the true edges (precision, recall, F1), or, from edge probabilities, by the area under the ROC
curve and the average precision.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata

from .identifiability import correlation_matrix

__all__ = ["PrecisionRecallF1", "latent_signs", "match_latents", "permute_targets",
           "target_auroc", "target_average_precision", "target_precision_recall_f1"]


class PrecisionRecallF1(NamedTuple):
    """Scores of a predicted binary graph against the true one."""

    precision: float
    recall: float
    f1: float


def match_latents(true_latents: np.ndarray, learned_latents: np.ndarray, *,
                  signed: bool = False, method: str = "pearson") -> np.ndarray:
    r"""Match each true latent to a distinct learned latent by correlation (Hungarian).

    The assignment maximises the summed absolute correlation of matched pairs (the matching of
    :func:`~.identifiability.mean_correlation_coefficient`): a latent's sign is not identifiable
    (flipping a latent, and the decoder and shifts with it, leaves the model unchanged).

    ``signed=True`` matches on signed correlation, as the sVAE reference evaluation does: a
    learned latent that tracks a true one with flipped sign is not rewarded, and is paired with
    another true latent, its column of targets with it. Resolve the signs first for it to mean
    what it should: ``match_latents(true, learned * latent_signs(true, learned), signed=True)``
    then agrees with the default.

    Parameters
    ----------
    true_latents : (n_cells, k_true) array
    learned_latents : (n_cells, k_learned) array
    signed : bool
        Match on absolute (default) or signed correlation.
    method : {"pearson", "spearman"}

    Returns
    -------
    (k_true,) int array
        ``assignment[j]`` is the learned column matched to true latent ``j``, or ``-1`` when
        ``k_learned < k_true`` leaves true latent ``j`` without a partner. Reorder a learned
        graph with ``learned_targets[:, assignment]`` (see :func:`permute_targets`).
    """
    corr = correlation_matrix(true_latents, learned_latents, method)
    if not signed:
        corr = np.abs(corr)
    rows, cols = linear_sum_assignment(corr, maximize=True)
    assignment = np.full(corr.shape[0], -1, dtype=np.int64)
    assignment[rows] = cols
    return assignment


def latent_signs(true_latents: np.ndarray, learned_latents: np.ndarray, *,
                 method: str = "pearson") -> np.ndarray:
    """The sign that orients each learned latent like the true latent it is matched to.

    Learned latents are matched to true ones on absolute correlation (Hungarian, as
    :func:`match_latents` with ``signed=False``); a matched latent's sign is that of its
    correlation with its partner, so ``learned * signs`` correlates positively with it.

    Parameters
    ----------
    true_latents : (n_cells, k_true) array
    learned_latents : (n_cells, k_learned) array
    method : {"pearson", "spearman"}

    Returns
    -------
    (k_learned,) float array of +1 and -1
        Unmatched learned latents (``k_learned > k_true``) and matched ones with correlation
        exactly 0 keep +1.
    """
    corr = correlation_matrix(true_latents, learned_latents, method)
    rows, cols = linear_sum_assignment(np.abs(corr), maximize=True)
    signs = np.ones(corr.shape[1])
    signs[cols] = np.where(corr[rows, cols] < 0, -1.0, 1.0)
    return signs


def _as_graph(name: str, values, *, binary: bool) -> np.ndarray:
    array = np.asarray(values)
    if array.ndim != 2:
        raise ValueError(f"{name} must be a (n_perturbations, n_latents) matrix; got shape "
                         f"{array.shape}")
    if array.dtype == bool:
        return array.astype(float)
    try:
        array = array.astype(float)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be numeric or boolean; got dtype {array.dtype}") from error
    if not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN or infinite values")
    if binary and not np.isin(array, (0.0, 1.0)).all():
        raise ValueError(f"{name} must be boolean (or 0/1); threshold scores first, e.g. "
                         f"{name} = probabilities > 0.5")
    return array


def permute_targets(learned_targets: np.ndarray, assignment: np.ndarray | None,
                    n_true_latents: int) -> np.ndarray:
    """Reorder a learned graph's columns to the true latents' order.

    Parameters
    ----------
    learned_targets : (n_perturbations, k_learned) array
    assignment : (k_true,) int array or None
        From :func:`match_latents`; ``-1`` entries give an all-zero column (no edge predicted).
        ``None`` means the columns already correspond (then ``k_learned`` must equal
        ``n_true_latents``).
    n_true_latents : int

    Returns
    -------
    (n_perturbations, n_true_latents) array
        Learned columns without a true partner are dropped.
    """
    learned_targets = np.asarray(learned_targets)
    k_learned = learned_targets.shape[1]
    if assignment is None:
        if k_learned != n_true_latents:
            raise ValueError(f"the learned graph has {k_learned} latent columns and the true one "
                             f"{n_true_latents}; pass assignment=match_latents(true_latents, "
                             "learned_latents) to match them")
        return learned_targets
    assignment = np.asarray(assignment)
    if assignment.shape != (n_true_latents,) or not np.issubdtype(assignment.dtype, np.integer):
        raise ValueError(f"assignment must be an integer array of shape ({n_true_latents},) (one "
                         f"learned column per true latent); got {assignment.dtype} "
                         f"{assignment.shape}")
    if (assignment >= k_learned).any() or (assignment < -1).any():
        raise ValueError(f"assignment entries must lie in [-1, {k_learned - 1}]; got "
                         f"{assignment.tolist()}")
    matched = assignment[assignment >= 0]
    if len(np.unique(matched)) != len(matched):
        raise ValueError(f"assignment uses a learned column twice: {assignment.tolist()}")
    padded = np.concatenate([learned_targets, np.zeros((len(learned_targets), 1),
                                                       learned_targets.dtype)], axis=1)
    return padded[:, np.where(assignment >= 0, assignment, k_learned)]


def _pair(true_targets, learned, assignment, *, binary: bool) -> tuple[np.ndarray, np.ndarray]:
    truth = _as_graph("true_targets", true_targets, binary=True)
    learned = _as_graph("learned_targets" if binary else "target_probabilities", learned,
                        binary=binary)
    if learned.shape[0] != truth.shape[0]:
        raise ValueError(f"true and learned graphs must have the same number of perturbations "
                         f"(rows); got {truth.shape[0]} and {learned.shape[0]}")
    learned = permute_targets(learned, assignment, truth.shape[1])
    return truth.ravel().astype(bool), learned.ravel()


def target_precision_recall_f1(true_targets: np.ndarray, learned_targets: np.ndarray,
                               assignment: np.ndarray | None = None) -> PrecisionRecallF1:
    r"""Precision, recall and F1 of the learned perturbation -> latent edges.

    Parameters
    ----------
    true_targets : (n_perturbations, k_true) bool array
    learned_targets : (n_perturbations, k_learned) bool array
        Binary learned graph (e.g. target probabilities > 0.5).
    assignment : (k_true,) int array, optional
        Learned column matched to each true latent (:func:`match_latents`); without it the
        columns are taken to correspond already. Learned columns left unmatched are ignored.

    Returns
    -------
    PrecisionRecallF1
        ``precision = TP / (TP + FP)``, ``recall = TP / (TP + FN)``, ``f1`` their harmonic mean;
        a ratio with a zero denominator is 0 (as scikit-learn's ``zero_division=0``).
    """
    truth, predicted = _pair(true_targets, learned_targets, assignment, binary=True)
    predicted = predicted.astype(bool)
    tp = float(np.sum(truth & predicted))
    n_predicted, n_true = float(predicted.sum()), float(truth.sum())
    precision = tp / n_predicted if n_predicted else 0.0
    recall = tp / n_true if n_true else 0.0
    f1 = 2 * tp / (n_predicted + n_true) if n_predicted + n_true else 0.0
    return PrecisionRecallF1(precision, recall, f1)


def target_auroc(true_targets: np.ndarray, target_probabilities: np.ndarray,
                 assignment: np.ndarray | None = None) -> float:
    r"""Area under the ROC curve of edge scores against the true graph.

    Computed from ranks (the Mann-Whitney statistic): with :math:`n_+` true edges,
    :math:`n_-` non-edges and :math:`R_+` the sum of the (tie-averaged) ranks of the true
    edges' scores,

    .. math:: \mathrm{AUROC} = \frac{R_+ - n_+(n_+ + 1)/2}{n_+ n_-},

    the probability that a random edge outscores a random non-edge, ties counting one half.

    Parameters
    ----------
    true_targets : (n_perturbations, k_true) bool array
    target_probabilities : (n_perturbations, k_learned) float array
        Any score that is higher for more likely edges.
    assignment : (k_true,) int array, optional
        See :func:`target_precision_recall_f1`; unmatched true latents score 0.

    Raises
    ------
    ValueError
        If the true graph has no edges or no non-edges (AUROC is undefined).
    """
    truth, scores = _pair(true_targets, target_probabilities, assignment, binary=False)
    n_pos = int(truth.sum())
    n_neg = truth.size - n_pos
    if n_pos == 0 or n_neg == 0:
        raise ValueError("AUROC is undefined when the true graph has only edges or only "
                         f"non-edges ({n_pos} edges, {n_neg} non-edges)")
    ranks = rankdata(scores)  # average ranks for ties
    return float((ranks[truth].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def target_average_precision(true_targets: np.ndarray, target_probabilities: np.ndarray,
                             assignment: np.ndarray | None = None) -> float:
    r"""Average precision of edge scores against the true graph (scikit-learn's definition).

    .. math:: \mathrm{AP} = \sum_n (R_n - R_{n-1})\, P_n,

    with :math:`P_n, R_n` the precision and recall when predicting every edge scoring at least
    the :math:`n`-th distinct score (thresholds in decreasing order, :math:`R_0 = 0`); tied scores
    enter at the same threshold. No interpolation is applied.

    Parameters
    ----------
    true_targets : (n_perturbations, k_true) bool array
    target_probabilities : (n_perturbations, k_learned) float array
    assignment : (k_true,) int array, optional
        See :func:`target_precision_recall_f1`; unmatched true latents score 0.

    Raises
    ------
    ValueError
        If the true graph has no edges.
    """
    truth, scores = _pair(true_targets, target_probabilities, assignment, binary=False)
    n_pos = int(truth.sum())
    if n_pos == 0:
        raise ValueError("average precision is undefined when the true graph has no edges")
    order = np.argsort(-scores, kind="mergesort")
    scores, truth = scores[order], truth[order]
    # last position of each distinct score: one threshold per distinct value
    ends = np.r_[np.flatnonzero(np.diff(scores)), truth.size - 1]
    tps = np.cumsum(truth)[ends]
    precision = tps / (ends + 1)
    recall = tps / n_pos
    return float(np.sum(np.diff(recall, prepend=0.0) * precision))
