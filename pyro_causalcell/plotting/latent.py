"""Views of latent spaces."""

from __future__ import annotations

from collections.abc import Sequence

import matplotlib.pyplot as plt
import numpy as np


def principal_components(values: np.ndarray, n_components: int = 2) -> np.ndarray:
    """``(n, k)`` -> ``(n, n_components)`` projection on the leading principal axes."""
    centred = values - values.mean(0)
    if centred.shape[1] <= n_components:
        return centred[:, :n_components]
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    return centred @ vt[:n_components].T


#: colourings with more categories than this get no legend (a screen's hundreds of
#: perturbations would cover the panel); the panel's title gives their number instead
MAX_LEGEND_ENTRIES = 20


def plot_latent(z: np.ndarray, colors: dict[str, Sequence], *, title: str = "latent space",
                point_size: float = 4.0) -> plt.Figure:
    """Scatter of the first two principal components of ``z``, one panel per colouring.

    Parameters
    ----------
    z : (n_cells, n_latent) array
    colors : dict of name -> (n_cells,) categories
        E.g. ``{"cell type": adata.obs["cell_type"], "batch": adata.obs["batch"]}``. A
        colouring with more than :data:`MAX_LEGEND_ENTRIES` categories has no legend; its
        title says how many there are.
    """
    xy = principal_components(np.asarray(z))
    fig, axes = plt.subplots(1, len(colors), figsize=(4.5 * len(colors), 4), squeeze=False)
    for ax, (name, values) in zip(axes[0], colors.items()):
        values = np.asarray(values).astype(str)
        categories = np.unique(values)
        for category in categories:
            pick = values == category
            ax.scatter(xy[pick, 0], xy[pick, 1], s=point_size, label=category, alpha=0.7,
                       linewidths=0)
        ax.set_xlabel("PC 1")
        ax.set_ylabel("PC 2")
        if len(categories) <= MAX_LEGEND_ENTRIES:
            ax.set_title(f"{title}: {name}")
            ax.legend(frameon=False, markerscale=3, fontsize="small")
        else:
            ax.set_title(f"{title}: {name} ({len(categories)} categories)")
    fig.tight_layout()
    return fig
