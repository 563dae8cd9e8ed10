"""Counterfactual vs observed cells: per-gene mean shifts and a shared embedding."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import scipy.sparse as sp

from .latent import principal_components


def _matrix(name: str, values) -> np.ndarray:
    values = getattr(values, "X", values)  # AnnData or array
    values = values.toarray() if sp.issparse(values) else np.asarray(values, dtype=float)
    if values.ndim != 2:
        raise ValueError(f"{name} must be a (cells, genes) matrix or an AnnData; got shape "
                         f"{values.shape}")
    return values


def log_normalise(counts: np.ndarray, total: float = 1e4) -> np.ndarray:
    """``log1p`` of counts scaled to ``total`` per cell, ``(cells, genes)``."""
    return np.log1p(counts / np.maximum(counts.sum(1, keepdims=True), 1e-12) * total)


def plot_counterfactual(observed, counterfactual, reference=None, *,
                        genes: Sequence[str] | None = None, n_top: int = 20,
                        labels: Sequence[str] = ("observed", "counterfactual", "reference"),
                        title: str | None = None) -> plt.Figure:
    """Two panels: the genes the intervention moves most, and the cells in one embedding.

    Parameters
    ----------
    observed : (cells, genes) array or AnnData
        The source cells as measured.
    counterfactual : (cells, genes) array or AnnData
        Their counterfactual expression (e.g. ``counterfactual(model, adata, do=...)``).
    reference : (cells', genes) array or AnnData, optional
        Cells actually observed under the intervention, when there are some.
    genes : sequence of str, optional
        Gene names (default: ``var_names`` of an AnnData, else indices).
    n_top : int
        Genes shown in the bar panel (largest absolute mean shift of log-normalised
        expression, counterfactual minus observed).

    Returns
    -------
    matplotlib Figure
    """
    groups = [_matrix("observed", observed), _matrix("counterfactual", counterfactual)]
    if reference is not None:
        groups.append(_matrix("reference", reference))
    n_genes = groups[0].shape[1]
    if any(g.shape[1] != n_genes for g in groups):
        raise ValueError(f"all inputs need the same genes; got {[g.shape[1] for g in groups]}")
    if genes is None:
        names = getattr(observed, "var_names", None)
        genes = list(names) if names is not None else [str(i) for i in range(n_genes)]
    logged = [log_normalise(g) for g in groups]
    shift = logged[1].mean(0) - logged[0].mean(0)
    top = np.argsort(-np.abs(shift))[:n_top][::-1]

    figure, (bars, embedding) = plt.subplots(1, 2, figsize=(11, max(3.5, 0.22 * len(top))))
    positions = np.arange(len(top))
    bars.barh(positions, shift[top], color="tab:orange", label=labels[1])
    if reference is not None:
        observed_shift = logged[2].mean(0) - logged[0].mean(0)
        bars.scatter(observed_shift[top], positions, color="black", s=12, zorder=3,
                     label=labels[2])
        bars.legend(loc="lower right", fontsize=8)
    bars.axvline(0.0, color="grey", lw=0.8)
    bars.set_yticks(positions, [genes[i] for i in top], fontsize=8)
    bars.set_xlabel("mean shift of log-normalised expression")
    bars.set_title(f"top {len(top)} genes moved")

    stacked = np.concatenate(logged)
    points = principal_components(stacked, 2)
    start = 0
    for group, label, colour in zip(logged, labels, ("tab:blue", "tab:orange", "black")):
        part = points[start:start + len(group)]
        embedding.scatter(part[:, 0], part[:, 1], s=4, alpha=0.5, color=colour, label=label)
        start += len(group)
    embedding.set_xlabel("PC 1")
    embedding.set_ylabel("PC 2")
    embedding.legend(markerscale=3, fontsize=8)
    embedding.set_title("cells (PCA of log-normalised expression)")
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure


def plot_fold_change_agreement(predicted: np.ndarray, truth: np.ndarray, *,
                               genes: Sequence[str] | None = None, n_top: int = 20,
                               labels: Sequence[str] = ("predicted", "true"),
                               title: str | None = None) -> plt.Figure:
    """A predicted per-gene response against the true one: a scatter, and the top genes.

    Parameters
    ----------
    predicted, truth : (n_genes,) arrays
        E.g. log fold changes of each gene's share of expression, counterfactual over factual,
        from a model and from the simulator that made the data.
    genes : sequence of str, optional
        Gene names (default: indices).
    n_top : int
        Genes in the bar panel: the largest absolute true changes.

    Returns
    -------
    matplotlib Figure
        The scatter carries the identity line and the Pearson correlation in its title.
    """
    predicted = np.asarray(predicted, dtype=float).ravel()
    truth = np.asarray(truth, dtype=float).ravel()
    if predicted.shape != truth.shape:
        raise ValueError(f"predicted and truth need one value per gene; got {predicted.shape} "
                         f"and {truth.shape}")
    genes = [str(i) for i in range(len(truth))] if genes is None else list(genes)
    figure, (scatter, bars) = plt.subplots(1, 2, figsize=(11, max(3.8, 0.22 * n_top)))
    scatter.scatter(truth, predicted, s=10, color="tab:orange")
    limit = 1.05 * max(np.abs(truth).max(), np.abs(predicted).max(), 1e-12)
    scatter.plot([-limit, limit], [-limit, limit], color="grey", lw=0.8)
    scatter.set_xlim(-limit, limit)
    scatter.set_ylim(-limit, limit)
    scatter.set_xlabel(labels[1])
    scatter.set_ylabel(labels[0])
    scatter.set_title(f"every gene: r = {np.corrcoef(predicted, truth)[0, 1]:.3f}")

    top = np.argsort(-np.abs(truth))[:n_top][::-1]
    positions = np.arange(len(top))
    bars.barh(positions, predicted[top], color="tab:orange", label=labels[0])
    bars.scatter(truth[top], positions, color="black", s=12, zorder=3, label=labels[1])
    bars.axvline(0.0, color="grey", lw=0.8)
    bars.set_yticks(positions, [genes[i] for i in top], fontsize=8)
    bars.set_title(f"top {len(top)} genes by true change")
    bars.legend(loc="lower right", fontsize=8)
    if title:
        figure.suptitle(title)
    figure.tight_layout()
    return figure
