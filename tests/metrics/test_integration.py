"""Integration scores: label silhouette (biology kept) and k-NN batch mixing (batch removed)."""

from __future__ import annotations

import numpy as np
import pytest

from pyro_causalcell.metrics.integration import (
    batch_mixing,
    label_silhouette,
    silhouette_samples,
)


@pytest.fixture
def separated():
    """Two labels (= two batches) far apart: (latent, labels)."""
    rng = np.random.default_rng(0)
    labels = np.repeat(["T", "B"], 200)
    latent = rng.normal(size=(400, 3)) * 0.1
    latent[labels == "B"] += 50.0
    return latent, labels


@pytest.fixture
def mixed():
    """One Gaussian blob with random labels / batches."""
    rng = np.random.default_rng(1)
    return rng.normal(size=(400, 3)), rng.integers(0, 2, 400)


def test_silhouette_hand_example():
    latent = np.array([[0.0], [1.0], [4.0], [6.0]])
    labels = [0, 0, 1, 1]
    # cell 0: a = 1, b = mean(4, 6) = 5 -> 4/5; cell 1: a = 1, b = 4 -> 3/4
    # cell 2: a = 2, b = mean(4, 3) = 3.5 -> 1.5/3.5; cell 3: a = 2, b = 5.5 -> 3.5/5.5
    expected = [4 / 5, 3 / 4, 1.5 / 3.5, 3.5 / 5.5]
    np.testing.assert_allclose(silhouette_samples(latent, labels, chunk_size=3), expected)
    assert label_silhouette(latent, labels) == pytest.approx((np.mean(expected) + 1) / 2)


def test_silhouette_singleton_label_scores_zero():
    widths = silhouette_samples(np.array([[0.0], [1.0], [5.0]]), ["a", "a", "b"])
    assert widths[2] == 0.0


def test_silhouette_extremes(separated, mixed):
    assert label_silhouette(*separated) > 0.99
    assert label_silhouette(*mixed) == pytest.approx(0.5, abs=0.02)
    latent, labels = separated
    flipped = np.where(labels == "T", "B", "T")
    swapped = np.concatenate([labels[:100], flipped[100:200], labels[200:300], flipped[300:]])
    assert label_silhouette(latent, swapped) < 0.5   # labels that cut across the clusters


def test_batch_mixing_extremes(separated, mixed):
    assert batch_mixing(*separated) == 0.0
    score = batch_mixing(*mixed)
    # random mixing of two equal batches: binomial entropy bias with 30 neighbours ~ 0.97
    assert 0.93 < score <= 1.0


def test_batch_mixing_reference_for_unbalanced_batches():
    rng = np.random.default_rng(2)
    latent = rng.normal(size=(600, 2))
    batches = rng.choice(["big", "small"], size=600, p=[0.9, 0.1])
    uniform = batch_mixing(latent, batches, reference="uniform")
    global_ = batch_mixing(latent, batches, reference="global")
    assert uniform < 0.6 < 0.8 < global_ <= 1.0


def test_batch_mixing_ignores_the_cell_itself_even_with_duplicates():
    latent = np.zeros((6, 2))  # all cells coincide: any 3 others are valid neighbours
    latent[3:] = 1.0
    assert batch_mixing(latent, [0, 0, 0, 1, 1, 1], n_neighbors=2) == 0.0
    assert batch_mixing(latent, [0, 1, 0, 1, 0, 1], n_neighbors=2) > 0.0


def test_bad_inputs_raise(mixed):
    latent, batches = mixed
    with pytest.raises(ValueError, match="2 distinct batches"):
        batch_mixing(latent, np.zeros(400))
    with pytest.raises(ValueError, match="n_neighbors"):
        batch_mixing(latent, batches, n_neighbors=400)
    with pytest.raises(ValueError, match="one entry per cell"):
        batch_mixing(latent, batches[:10])
    with pytest.raises(ValueError, match="reference"):
        batch_mixing(latent, batches, reference="other")
    with pytest.raises(ValueError, match="distinct"):
        label_silhouette(latent, np.zeros(400))
    with pytest.raises(ValueError, match="NaN"):
        label_silhouette(np.full((3, 2), np.nan), [0, 1, 1])
