"""Heatmaps of perturbation -> latent target graphs, learned next to the truth."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd

from ..metrics.targets import permute_targets

MAX_TICK_LABELS = 40  # beyond this many rows (or columns) tick labels are hidden
CMAP = "viridis"


def _matrix(name: str, values) -> tuple[np.ndarray, list[str] | None, list[str] | None]:
    """``(float matrix, row labels, column labels)``; labels only from a DataFrame."""
    frame = values if isinstance(values, pd.DataFrame) else None
    try:
        matrix = np.asarray(values, dtype=float)
    except (TypeError, ValueError) as error:
        raise ValueError(f"{name} must be numeric or boolean") from error
    if matrix.ndim != 2:
        raise ValueError(f"{name} must be a (n_perturbations, n_latents) matrix; got shape "
                         f"{matrix.shape}")
    if frame is None:
        return matrix, None, None
    return matrix, [str(i) for i in frame.index], [str(c) for c in frame.columns]


def _heatmap(ax: plt.Axes, matrix: np.ndarray, rows: Sequence[str] | None,
             columns: Sequence[str], title: str):
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap=CMAP, aspect="auto",
                      interpolation="nearest")
    n_rows, n_columns = matrix.shape
    if rows is not None and n_rows <= MAX_TICK_LABELS:
        ax.set_yticks(range(n_rows), rows, fontsize="small")
    else:
        ax.set_yticks([])
    if rows is not None:
        ax.set_ylabel(f"perturbation ({n_rows})")
    if n_columns <= MAX_TICK_LABELS:
        rotation = 90 if max(map(len, columns)) > 3 else 0
        ax.set_xticks(range(n_columns), columns, rotation=rotation, fontsize="small")
    else:
        ax.set_xticks([])
    ax.set_xlabel(f"latent ({n_columns})")
    ax.set_title(title)
    return image


def plot_targets(probabilities: pd.DataFrame | np.ndarray,
                 true_targets: pd.DataFrame | np.ndarray | None = None, *,
                 assignment: np.ndarray | None = None,
                 ax: plt.Axes | Sequence[plt.Axes] | None = None,
                 title: str = "target probability") -> plt.Figure:
    """Heatmap of the probability that each perturbation targets each latent.

    Parameters
    ----------
    probabilities : (n_perturbations, k_learned) DataFrame or array
        E.g. :func:`~pyro_causalcell.models.target_probabilities`; a frame's index and columns
        label the rows and columns. The colour scale is fixed to ``[0, 1]``.
    true_targets : (n_perturbations, k_true) bool DataFrame or array, optional
        When given, the learned graph is drawn next to the truth (two panels).
    assignment : (k_true,) int array, optional
        Learned column matched to each true latent
        (:func:`~pyro_causalcell.metrics.targets.match_latents`); the learned columns are
        reordered to the true latents (unmatched true latents show as zeros). Without it the
        columns are taken to correspond already.
    ax : Axes, or a pair of Axes when ``true_targets`` is given, optional
        Where to draw (default: a new figure).
    title : str
        Title of the learned panel.

    Returns
    -------
    matplotlib.figure.Figure
        With one heatmap per panel and a shared colorbar. Tick labels are hidden beyond
        40 perturbations or latents.
    """
    learned, rows, columns = _matrix("probabilities", probabilities)
    n_rows, k_learned = learned.shape
    rows = rows or [str(p) for p in range(n_rows)]
    columns = columns or [f"z{k}" for k in range(k_learned)]
    panels = [(learned, rows, columns, title)]
    if true_targets is not None:
        truth, _, true_columns = _matrix("true_targets", true_targets)
        if truth.shape[0] != n_rows:
            raise ValueError(f"probabilities and true_targets must have the same perturbations "
                             f"(rows); got {n_rows} and {truth.shape[0]}")
        k_true = truth.shape[1]
        learned = permute_targets(learned, assignment, k_true)
        if assignment is not None:
            columns = [columns[j] if j >= 0 else "none" for j in np.asarray(assignment)]
            title = f"{title} (matched)"
        panels = [(learned, rows, columns, title),
                  (truth, None, true_columns or [f"true {k}" for k in range(k_true)],
                   "true targets")]
    elif assignment is not None:
        raise ValueError("assignment reorders the learned columns to the true latents; pass "
                         "true_targets with it")

    if ax is None:
        height = min(max(3.0, 0.22 * n_rows + 1.5), 12.0)
        width = sum(min(max(2.0, 0.35 * p[0].shape[1] + 1.5), 10.0) for p in panels) + 1.0
        fig, axes = plt.subplots(1, len(panels), figsize=(width, height), squeeze=False,
                                 layout="constrained")
        axes = list(axes[0])
    else:
        axes = [ax] if isinstance(ax, plt.Axes) else list(ax)
        if len(axes) != len(panels):
            raise ValueError(f"ax must be {len(panels)} Axes here (one per panel); got "
                             f"{len(axes)}")
        fig = axes[0].figure
    images = [_heatmap(a, *panel) for a, panel in zip(axes, panels)]
    fig.colorbar(images[0], ax=axes, label="probability", shrink=0.8)
    return fig
