"""Clustering agreement: NMI, ARI and k-means on a latent block."""

from __future__ import annotations

import numpy as np
import pytest

from pyro_causalcell.metrics.clustering import (
    adjusted_rand_index,
    cluster_agreement,
    kmeans,
    normalized_mutual_information,
)


@pytest.fixture
def labels() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 4, size=2000)


def test_relabelled_identical_partitions_score_one(labels):
    relabelled = np.array(["d", "a", "c", "b"])[labels]  # any values, any order
    assert normalized_mutual_information(labels, relabelled) == pytest.approx(1.0)
    assert adjusted_rand_index(labels, relabelled) == pytest.approx(1.0)


def test_independent_partitions_score_near_zero(labels):
    other = np.random.default_rng(1).integers(0, 5, size=len(labels))
    assert 0.0 <= normalized_mutual_information(labels, other) < 0.01
    assert abs(adjusted_rand_index(labels, other)) < 0.01


def test_ari_hand_example():
    a = [0, 0, 0, 1, 1, 1]
    b = [0, 0, 1, 1, 2, 2]
    # contingency [[2, 1, 0], [0, 1, 2]]: sum C(n_ij, 2) = 2; rows 3 + 3 = 6; cols 1 + 1 + 1 = 3
    # expected = 6 * 3 / C(6, 2) = 1.2; max = 4.5  ->  (2 - 1.2) / (4.5 - 1.2)
    assert adjusted_rand_index(a, b) == pytest.approx(0.8 / 3.3)
    assert adjusted_rand_index(b, a) == pytest.approx(0.8 / 3.3)


def test_nmi_hand_example():
    a = [0, 0, 1, 1]
    b = [0, 0, 0, 1]
    # I = H(b) - H(b | a) = H(1/4) - 1/2 * H(1/2);  NMI = I / ((H(a) + H(b)) / 2)
    h = lambda *p: -sum(x * np.log(x) for x in p)  # noqa: E731
    mi = h(0.25, 0.75) - 0.5 * h(0.5, 0.5)
    assert normalized_mutual_information(a, b) == pytest.approx(mi / ((h(0.5, 0.5)
                                                                       + h(0.25, 0.75)) / 2))


def test_degenerate_partitions():
    assert normalized_mutual_information([1, 1, 1], ["x", "x", "x"]) == 1.0
    assert adjusted_rand_index([1, 1, 1], [2, 2, 2]) == 1.0
    assert normalized_mutual_information([0, 0, 0, 0], [0, 1, 0, 1]) == 0.0
    assert adjusted_rand_index([0, 0, 0, 0], [0, 1, 0, 1]) == 0.0


def test_kmeans_recovers_separated_clusters():
    rng = np.random.default_rng(2)
    centers = np.array([[0.0, 0.0], [10.0, 0.0], [0.0, 10.0]])
    truth = rng.integers(0, 3, 300)
    x = centers[truth] + rng.normal(size=(300, 2))
    labels, found, inertia = kmeans(x, 3, seed=0)
    assert adjusted_rand_index(truth, labels) == 1.0
    assert found.shape == (3, 2) and inertia == pytest.approx(((x - found[labels]) ** 2).sum())


def test_cluster_agreement_of_an_informative_and_an_uninformative_latent():
    rng = np.random.default_rng(3)
    cell_type = rng.choice(["T", "B", "NK"], size=600)
    means = {"T": [4.0, 0.0], "B": [-4.0, 0.0], "NK": [0.0, 6.0]}
    informative = np.array([means[c] for c in cell_type]) + rng.normal(size=(600, 2))
    nmi, ari = cluster_agreement(informative, cell_type)
    assert nmi > 0.95 and ari > 0.95
    noise = cluster_agreement(rng.normal(size=(600, 2)), cell_type)
    assert noise.nmi < 0.05 and abs(noise.ari) < 0.05


def test_bad_inputs_raise():
    with pytest.raises(ValueError, match="same cells"):
        adjusted_rand_index([0, 1], [0, 1, 1])
    with pytest.raises(ValueError, match="1-D"):
        normalized_mutual_information(np.zeros((2, 2)), [0, 1])
    with pytest.raises(ValueError, match="n_clusters"):
        kmeans(np.zeros((3, 2)), 4)
    with pytest.raises(ValueError, match="NaN"):
        kmeans(np.full((3, 2), np.nan), 2)
    with pytest.raises(ValueError, match="one row per label"):
        cluster_agreement(np.zeros((4, 2)), [0, 1, 0])
