r"""Agreement of a partition of cells with a covariate: NMI, ARI, and k-means on a latent block.

A latent block that encodes a covariate (cell type, cell line, treatment) separates its
categories; clustering the block and comparing the clusters with the covariate's labels
measures how much of the covariate the block carries.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

__all__ = ["ClusterAgreement", "adjusted_rand_index", "cluster_agreement", "kmeans",
           "normalized_mutual_information"]


class ClusterAgreement(NamedTuple):
    """Agreement of clusters of a latent with labels."""

    nmi: float
    ari: float


def _encode(name: str, labels) -> np.ndarray:
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of labels; got shape {labels.shape}")
    if labels.dtype.kind == "f" and np.isnan(labels).any():
        raise ValueError(f"{name} contains NaN")
    return np.unique(labels, return_inverse=True)[1].ravel()


def _contingency(a, b) -> np.ndarray:
    a, b = _encode("a", a), _encode("b", b)
    if len(a) != len(b):
        raise ValueError(f"a and b must label the same cells; got {len(a)} and {len(b)} labels")
    if len(a) == 0:
        raise ValueError("a and b are empty")
    table = np.zeros((a.max() + 1, b.max() + 1))
    np.add.at(table, (a, b), 1.0)
    return table


def _entropy(counts: np.ndarray) -> float:
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


def normalized_mutual_information(a, b) -> float:
    r"""Mutual information of two partitions over the mean of their entropies.

    .. math:: \mathrm{NMI}(a, b) = \frac{I(a; b)}{\tfrac12 [H(a) + H(b)]}

    (arithmetic normalisation, scikit-learn's default). Two single-cluster partitions score 1;
    any other pair with zero mutual information scores 0. Label values are arbitrary.

    Parameters
    ----------
    a, b : (n_cells,) arrays of labels (any hashable dtype)

    Returns
    -------
    float in [0, 1]
    """
    table = _contingency(a, b)
    if table.shape[0] == table.shape[1] == 1:
        return 1.0
    n = table.sum()
    rows, cols = table.sum(1), table.sum(0)
    nz = table > 0
    mi = float(np.sum(table[nz] / n * np.log(table[nz] * n / np.outer(rows, cols)[nz])))
    if mi <= 0.0:
        return 0.0
    return float(min(1.0, mi / (0.5 * (_entropy(rows) + _entropy(cols)))))


def adjusted_rand_index(a, b) -> float:
    r"""Rand index of two partitions adjusted for chance (Hubert and Arabie, 1985).

    With :math:`n_{ij}` the contingency table, :math:`a_i, b_j` its margins and
    :math:`\binom{\cdot}{2}` pair counts,

    .. math::
        \mathrm{ARI} = \frac{\sum_{ij}\binom{n_{ij}}{2} - E}
        {\tfrac12\big[\sum_i\binom{a_i}{2} + \sum_j\binom{b_j}{2}\big] - E}, \qquad
        E = \frac{\sum_i\binom{a_i}{2}\sum_j\binom{b_j}{2}}{\binom{n}{2}}.

    1 for identical partitions (up to relabelling), about 0 for independent ones, can be
    negative. Degenerate cases where the denominator vanishes (e.g. both partitions a single
    cluster, or both all singletons) score 1, as in scikit-learn.

    Parameters
    ----------
    a, b : (n_cells,) arrays of labels

    Returns
    -------
    float in [-1, 1]
    """
    table = _contingency(a, b)
    pairs = lambda x: x * (x - 1) / 2.0  # noqa: E731
    n = table.sum()
    sum_cells = pairs(table).sum()
    sum_rows, sum_cols = pairs(table.sum(1)).sum(), pairs(table.sum(0)).sum()
    expected = sum_rows * sum_cols / pairs(n) if n > 1 else 0.0
    maximum = 0.5 * (sum_rows + sum_cols)
    if maximum == expected:
        return 1.0
    return float((sum_cells - expected) / (maximum - expected))


def _squared_distances(x: np.ndarray, centers: np.ndarray, x_sq: np.ndarray) -> np.ndarray:
    d = x_sq[:, None] - 2.0 * x @ centers.T + (centers ** 2).sum(1)[None, :]
    return np.maximum(d, 0.0)


def _kmeans_plus_plus(x, x_sq, k, rng) -> np.ndarray:
    n = len(x)
    centers = np.empty((k, x.shape[1]))
    centers[0] = x[rng.integers(n)]
    closest = _squared_distances(x, centers[:1], x_sq)[:, 0]
    for j in range(1, k):
        total = closest.sum()
        # all remaining points coincide with a center: any choice is as good
        idx = rng.integers(n) if total <= 0 else rng.choice(n, p=closest / total)
        centers[j] = x[idx]
        closest = np.minimum(closest, _squared_distances(x, centers[j:j + 1], x_sq)[:, 0])
    return centers


def kmeans(x: np.ndarray, n_clusters: int, *, n_init: int = 10, max_iter: int = 300,
           tol: float = 1e-4, seed: int = 0) -> tuple[np.ndarray, np.ndarray, float]:
    r"""Lloyd's k-means with k-means++ initialisation, best of ``n_init`` restarts.

    Parameters
    ----------
    x : (n_cells, n_dims) array
    n_clusters : int
        ``1 <= n_clusters <= n_cells``.
    n_init : int
        Restarts; the run with the lowest inertia is kept.
    max_iter : int
    tol : float
        Stop when the summed squared movement of the centers falls below ``tol`` times the
        data's mean per-dimension variance (scikit-learn's criterion).
    seed : int

    Returns
    -------
    labels : (n_cells,) int array
    centers : (n_clusters, n_dims) array
    inertia : float
        Sum of squared distances of cells to their centers.
    """
    x = np.asarray(x, dtype=float)
    if x.ndim == 1:
        x = x[:, None]
    if x.ndim != 2 or len(x) == 0:
        raise ValueError(f"x must be a non-empty (n_cells, n_dims) array; got shape {x.shape}")
    if not np.isfinite(x).all():
        raise ValueError("x contains NaN or infinite values")
    if int(n_clusters) != n_clusters or not 1 <= n_clusters <= len(x):
        raise ValueError(f"n_clusters must be an integer in [1, {len(x)}], got {n_clusters}")
    n_clusters = int(n_clusters)
    rng = np.random.default_rng(seed)
    x_sq = (x ** 2).sum(1)
    threshold = tol * float(x.var(0).mean())
    best = None
    for _ in range(max(1, n_init)):
        centers = _kmeans_plus_plus(x, x_sq, n_clusters, rng)
        for _ in range(max_iter):
            labels = _squared_distances(x, centers, x_sq).argmin(1)
            counts = np.bincount(labels, minlength=n_clusters)
            sums = np.stack([np.bincount(labels, weights=column, minlength=n_clusters)
                             for column in x.T], axis=1)
            new = np.where(counts[:, None] > 0, sums / np.maximum(counts, 1)[:, None], centers)
            empty = np.flatnonzero(counts == 0)
            if empty.size:  # re-seed empty clusters at the worst-fitted cells
                far = _squared_distances(x, new, x_sq).min(1).argsort()[::-1][:empty.size]
                new[empty] = x[far]
            shift = ((new - centers) ** 2).sum()
            centers = new
            if shift <= threshold:
                break
        distances = _squared_distances(x, centers, x_sq)
        labels = distances.argmin(1)
        inertia = float(distances[np.arange(len(x)), labels].sum())
        if best is None or inertia < best[2]:
            best = (labels, centers, inertia)
    return best


def cluster_agreement(latent: np.ndarray, labels, n_clusters: int | None = None, *,
                      seed: int = 0, n_init: int = 10) -> ClusterAgreement:
    """NMI and ARI between k-means clusters of a latent and a covariate's labels.

    Parameters
    ----------
    latent : (n_cells, n_dims) array
        A latent block (e.g. the posterior means of ``"z_x"``).
    labels : (n_cells,) array
        The covariate (cell type, cell line, ...).
    n_clusters : int, optional
        Clusters for k-means; default the number of distinct labels.
    seed : int
    n_init : int
        k-means restarts.

    Returns
    -------
    ClusterAgreement
        ``(nmi, ari)``.
    """
    latent = np.asarray(latent, dtype=float)
    if latent.ndim == 1:
        latent = latent[:, None]
    codes = _encode("labels", labels)
    if latent.ndim != 2 or len(latent) != len(codes):
        raise ValueError(f"latent must be (n_cells, n_dims) with one row per label; got "
                         f"{latent.shape} and {len(codes)} labels")
    k = int(codes.max()) + 1 if n_clusters is None else n_clusters
    clusters, _, _ = kmeans(latent, k, n_init=n_init, seed=seed)
    return ClusterAgreement(normalized_mutual_information(codes, clusters),
                            adjusted_rand_index(codes, clusters))
