"""plot_counterfactual: the bars are the largest mean shifts; the embedding holds every cell."""

from __future__ import annotations

import anndata as ad
import matplotlib
import numpy as np
import pytest

matplotlib.use("Agg")

from pyro_causalcell.plotting import log_normalise, plot_counterfactual  # noqa: E402


@pytest.fixture
def cells():
    rng = np.random.default_rng(0)
    observed = rng.poisson(5.0, size=(40, 6)).astype(float) + 1
    moved = observed.copy()
    moved[:, 2] *= 8.0  # gene g2 goes up, g4 down
    moved[:, 4] /= 4.0
    genes = [f"g{i}" for i in range(6)]
    return ad.AnnData(observed, var={"name": genes}).copy(), moved, genes


def test_bars_rank_the_moved_genes_and_the_embedding_has_every_cell(cells):
    observed, moved, genes = cells
    observed.var_names = genes
    figure = plot_counterfactual(observed, moved, reference=moved[:10], n_top=2)
    bars, embedding = figure.axes
    expected = log_normalise(moved).mean(0) - log_normalise(observed.X).mean(0)
    shown = [genes.index(t.get_text()) for t in bars.get_yticklabels()]
    assert sorted(shown) == [2, 4]  # the two genes the intervention moved
    assert abs(expected[shown[-1]]) >= abs(expected[shown[0]])  # largest on top
    np.testing.assert_allclose([patch.get_width() for patch in bars.patches], expected[shown])
    assert sum(len(c.get_offsets()) for c in embedding.collections) == 40 + 40 + 10
    matplotlib.pyplot.close(figure)


def test_mismatched_genes_are_refused(cells):
    observed, moved, _ = cells
    with pytest.raises(ValueError, match="all inputs need the same genes"):
        plot_counterfactual(observed, moved[:, :5])
    with pytest.raises(ValueError, match="counterfactual must be a \\(cells, genes\\) matrix"):
        plot_counterfactual(observed, moved[0])


def test_fold_change_agreement_shows_every_gene_and_the_top_ones():
    from pyro_causalcell.plotting import plot_fold_change_agreement

    truth = np.linspace(-2.0, 3.0, 30)
    predicted = 0.5 * truth
    figure = plot_fold_change_agreement(predicted, truth, genes=[f"g{i}" for i in range(30)],
                                        n_top=5, title="t")
    scatter, bars = figure.axes
    assert scatter.get_title() == "every gene: r = 1.000"
    np.testing.assert_allclose(scatter.collections[0].get_offsets(),
                               np.column_stack([truth, predicted]))
    assert [t.get_text() for t in bars.get_yticklabels()] == ["g25", "g26", "g27", "g28", "g29"]
    matplotlib.pyplot.close(figure)
    with pytest.raises(ValueError, match=r"one value per gene; got \(3,\) and \(4,\)"):
        plot_fold_change_agreement(np.zeros(3), np.zeros(4))
