r"""Integration scores of a latent space: biology kept (label silhouette), batch removed (mixing).

Both are on a 0-1 scale where higher is better: a latent that integrates batches well keeps
cells of one label together (:func:`label_silhouette` near 1) while cells of different batches
are mixed among each other's neighbours (:func:`batch_mixing` near 1).
"""

from __future__ import annotations

import numpy as np
from scipy.spatial import cKDTree
from scipy.spatial.distance import cdist

__all__ = ["batch_mixing", "label_silhouette", "silhouette_samples"]


def _latent_and_codes(latent, labels, name: str) -> tuple[np.ndarray, np.ndarray, int]:
    latent = np.asarray(latent, dtype=float)
    if latent.ndim == 1:
        latent = latent[:, None]
    if latent.ndim != 2:
        raise ValueError(f"latent must be a (n_cells, n_dims) array; got shape {latent.shape}")
    if not np.isfinite(latent).all():
        raise ValueError("latent contains NaN or infinite values")
    labels = np.asarray(labels)
    if labels.ndim != 1 or len(labels) != len(latent):
        raise ValueError(f"{name} must be a 1-D array with one entry per cell ({len(latent)}); "
                         f"got shape {labels.shape}")
    values, codes = np.unique(labels, return_inverse=True)
    return latent, codes.ravel(), len(values)


def silhouette_samples(latent: np.ndarray, labels, *, chunk_size: int = 1024) -> np.ndarray:
    r"""Silhouette width of every cell under Euclidean distance.

    :math:`s_i = (b_i - a_i) / \max(a_i, b_i)` with :math:`a_i` the mean distance to the other
    cells of its label and :math:`b_i` the smallest mean distance to the cells of another label;
    cells alone in their label score 0. Exact, computed in chunks of rows (memory
    ``chunk_size * n_cells``; time :math:`O(n^2 d)`).

    Parameters
    ----------
    latent : (n_cells, n_dims) array
    labels : (n_cells,) array
        Needs between 2 and ``n_cells - 1`` distinct labels.
    chunk_size : int

    Returns
    -------
    (n_cells,) array in [-1, 1]
    """
    latent, codes, n_labels = _latent_and_codes(latent, labels, "labels")
    n = len(latent)
    if not 2 <= n_labels <= n - 1:
        raise ValueError(f"the silhouette needs between 2 and n_cells - 1 = {n - 1} distinct "
                         f"labels; got {n_labels}")
    one_hot = np.eye(n_labels)[codes]
    sizes = one_hot.sum(0)
    widths = np.empty(n)
    for start in range(0, n, chunk_size):
        rows = slice(start, min(start + chunk_size, n))
        sums = cdist(latent[rows], latent) @ one_hot        # (chunk, n_labels)
        own = codes[rows]
        index = np.arange(len(own))
        own_size = sizes[own]
        a = sums[index, own] / np.maximum(own_size - 1, 1)
        means = sums / sizes
        means[index, own] = np.inf
        b = means.min(1)
        with np.errstate(invalid="ignore", divide="ignore"):
            s = (b - a) / np.maximum(a, b)
        s[(own_size == 1) | ~np.isfinite(s)] = 0.0
        widths[rows] = s
    return widths


def label_silhouette(latent: np.ndarray, labels, *, chunk_size: int = 1024) -> float:
    r"""Mean silhouette width of the labels, rescaled to [0, 1]: :math:`(\bar s + 1) / 2`.

    1: every label is a tight cluster far from the others (biology kept); 0.5: labels overlap;
    0: cells are closer to other labels than to their own. This is the "ASW label" score of
    scIB's integration benchmark.

    Parameters
    ----------
    latent : (n_cells, n_dims) array
    labels : (n_cells,) array
        Biological labels (cell types).
    chunk_size : int
        Rows per chunk of the exact pairwise distances.

    Returns
    -------
    float in [0, 1]
    """
    return float((silhouette_samples(latent, labels, chunk_size=chunk_size).mean() + 1.0) / 2.0)


def batch_mixing(latent: np.ndarray, batches, n_neighbors: int = 30, *,
                 reference: str = "uniform") -> float:
    r"""How well batches mix among each cell's nearest neighbours, on [0, 1].

    For each cell, take its ``n_neighbors`` nearest other cells (Euclidean, ``cKDTree``), the
    proportions :math:`p_{ib}` of each batch among them, and the entropy
    :math:`H_i = -\sum_b p_{ib} \log p_{ib}`. The score is the mean over cells of
    :math:`H_i / H_{\max}`:

    - ``reference="uniform"``: :math:`H_{\max} = \log B` for :math:`B` batches; 1 means every
      neighbourhood holds all batches equally, 0 that every neighbourhood is a single batch.
      With unbalanced batches, random mixing scores the entropy of the global batch frequencies
      over :math:`\log B`, below 1;
    - ``reference="global"``: :math:`H_{\max}` is the entropy of the global batch frequencies,
      each :math:`H_i / H_{\max}` clipped at 1, so random mixing scores about 1 whatever the
      batch sizes.

    Finite neighbourhoods bias entropies down slightly: perfectly random mixing of two equal
    batches with 30 neighbours scores about 0.97.

    Parameters
    ----------
    latent : (n_cells, n_dims) array
    batches : (n_cells,) array
        Technical batch of each cell; needs at least 2 distinct values.
    n_neighbors : int
        ``1 <= n_neighbors <= n_cells - 1``.
    reference : {"uniform", "global"}

    Returns
    -------
    float in [0, 1]
    """
    latent, codes, n_batches = _latent_and_codes(latent, batches, "batches")
    n = len(latent)
    if n_batches < 2:
        raise ValueError("batch mixing needs at least 2 distinct batches")
    if int(n_neighbors) != n_neighbors or not 1 <= n_neighbors <= n - 1:
        raise ValueError(f"n_neighbors must be an integer in [1, {n - 1}], got {n_neighbors}")
    if reference not in ("uniform", "global"):
        raise ValueError(f"reference={reference!r}; choose 'uniform' or 'global'")
    k = int(n_neighbors)
    _, index = cKDTree(latent).query(latent, k=k + 1)
    index = index.reshape(n, k + 1)
    # drop each cell itself; with duplicated points it may not come first (or at all)
    is_self = index == np.arange(n)[:, None]
    drop = np.where(is_self.any(1), is_self.argmax(1), k)
    keep = np.ones_like(index, dtype=bool)
    keep[np.arange(n), drop] = False
    neighbours = index[keep].reshape(n, k)
    flat = np.repeat(np.arange(n), k) * n_batches + codes[neighbours].ravel()
    proportions = np.bincount(flat, minlength=n * n_batches).reshape(n, n_batches) / k
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.sum(np.where(proportions > 0, proportions * np.log(proportions), 0.0), 1)
    if reference == "uniform":
        return float(entropy.mean() / np.log(n_batches))
    frequencies = np.bincount(codes) / n
    maximum = -np.sum(frequencies * np.log(frequencies))
    return float(np.minimum(entropy / maximum, 1.0).mean())
