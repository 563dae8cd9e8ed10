"""plot_latent: principal components of a latent space, one panel per colouring."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402

from pyro_causalcell.plotting.latent import MAX_LEGEND_ENTRIES, plot_latent  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


def test_one_panel_per_colouring_with_a_legend_of_its_categories():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(60, 5))
    fig = plot_latent(z, {"cell type": ["T", "B", "NK"] * 20, "batch": ["a", "b"] * 30})
    first, second = fig.axes
    assert first.get_title() == "latent space: cell type"
    assert sorted(t.get_text() for t in first.get_legend().get_texts()) == ["B", "NK", "T"]
    assert sorted(t.get_text() for t in second.get_legend().get_texts()) == ["a", "b"]
    # every cell is drawn once, at its first two principal components
    assert sum(len(c.get_offsets()) for c in first.collections) == 60


def test_a_screen_of_many_perturbations_gets_a_count_instead_of_a_legend():
    rng = np.random.default_rng(1)
    n = MAX_LEGEND_ENTRIES + 30
    labels = [f"KO_{i % n}" for i in range(5 * n)]
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "tight layout not applied" from an oversized legend
        fig = plot_latent(rng.normal(size=(5 * n, 4)), {"perturbation": labels})
    ax, = fig.axes
    assert ax.get_legend() is None
    assert ax.get_title() == f"latent space: perturbation ({n} categories)"
