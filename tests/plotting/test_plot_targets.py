"""plot_targets: learned target probabilities next to the true graph."""

from __future__ import annotations

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import pytest  # noqa: E402

from pyro_causalcell.metrics.targets import permute_targets  # noqa: E402
from pyro_causalcell.plotting.targets import plot_targets  # noqa: E402


@pytest.fixture(autouse=True)
def close_figures():
    yield
    plt.close("all")


@pytest.fixture
def probabilities() -> pd.DataFrame:
    values = np.random.default_rng(0).uniform(size=(5, 4))
    return pd.DataFrame(values, index=[f"KO_{i}" for i in range(5)],
                        columns=[f"z{k}" for k in range(4)])


def image(ax) -> np.ndarray:
    return np.asarray(ax.images[0].get_array())


def test_single_panel_labels_and_fixed_scale(probabilities):
    fig = plot_targets(probabilities, title="sVAE+")
    heatmap, _ = fig.axes
    np.testing.assert_array_equal(image(heatmap), probabilities.values)
    assert heatmap.images[0].get_clim() == (0.0, 1.0)
    assert [t.get_text() for t in heatmap.get_yticklabels()] == list(probabilities.index)
    assert [t.get_text() for t in heatmap.get_xticklabels()] == list(probabilities.columns)
    assert heatmap.get_title() == "sVAE+"
    assert heatmap.images[0].colorbar is not None


def test_with_truth_reorders_learned_columns_by_assignment(probabilities):
    truth = np.zeros((5, 3), dtype=bool)
    truth[np.arange(5), np.arange(5) % 3] = True
    assignment = np.array([2, -1, 0])
    fig = plot_targets(probabilities, truth, assignment=assignment)
    assert isinstance(fig, plt.Figure)
    learned, true, _ = fig.axes
    assert learned.images[0].colorbar is not None
    np.testing.assert_array_equal(image(learned),
                                  permute_targets(probabilities.values, assignment, 3))
    np.testing.assert_array_equal(image(true), truth.astype(float))
    assert [t.get_text() for t in learned.get_xticklabels()] == ["z2", "none", "z0"]
    assert all(ax.images[0].get_clim() == (0.0, 1.0) for ax in (learned, true))


def test_many_perturbations_hide_row_labels():
    fig = plot_targets(np.random.default_rng(1).uniform(size=(100, 8)))
    assert len(fig.axes[0].get_yticks()) == 0
    assert fig.axes[0].get_ylabel() == "perturbation (100)"
    assert fig.get_figheight() <= 12


def test_draws_on_given_axes(probabilities):
    fig, axes = plt.subplots(1, 2)
    assert plot_targets(probabilities, probabilities.values > 0.5, ax=axes) is fig
    assert all(len(ax.images) == 1 for ax in axes)


def test_rejects_mismatched_inputs(probabilities):
    with pytest.raises(ValueError, match="same perturbations \\(rows\\); got 5 and 4"):
        plot_targets(probabilities, np.zeros((4, 4), dtype=bool))
    with pytest.raises(ValueError, match="pass assignment=match_latents"):
        plot_targets(probabilities, np.zeros((5, 3), dtype=bool))
    with pytest.raises(ValueError, match="must be a \\(n_perturbations, n_latents\\) matrix"):
        plot_targets(np.zeros(4))
    with pytest.raises(ValueError, match="pass true_targets with it"):
        plot_targets(probabilities, assignment=np.arange(4))
    with pytest.raises(ValueError, match="ax must be 2 Axes"):
        plot_targets(probabilities, probabilities.values > 0.5, ax=plt.subplots()[1])
