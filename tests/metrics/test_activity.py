import numpy as np
import pytest

from pyro_causalcell.metrics import ACTIVITY_THRESHOLD, inactive_latents, latent_activity


def test_activity_is_the_variance_over_cells_of_each_dimension():
    z = np.array([[0.0, 1.0, 5.0], [2.0, 1.0, 5.0], [4.0, 1.0, 5.1]])
    np.testing.assert_allclose(latent_activity(z), [8 / 3, 0.0, 0.02 / 9], rtol=1e-9,
                               atol=1e-12)
    assert inactive_latents(z) == [1, 2]
    assert inactive_latents(z, threshold=1e-3) == [1]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_dimensions_whose_posterior_means_hardly_vary_are_inactive(seed):
    scales = np.array([1.0, 0.05, 2.0, 0.2])  # variances 1, 0.0025, 4, 0.04
    z = np.random.default_rng(seed).normal(size=(4000, 4)) * scales + 3.0
    np.testing.assert_allclose(latent_activity(z), scales ** 2, rtol=0.1)
    assert ACTIVITY_THRESHOLD == 0.01
    assert inactive_latents(z) == [1]
    assert inactive_latents(z, threshold=0.1) == [1, 3]


def test_every_dimension_active_gives_an_empty_list():
    z = np.random.default_rng(0).normal(size=(500, 3))
    assert inactive_latents(z) == []


@pytest.mark.parametrize("z, message", [
    (np.zeros(5), r"z must be a \(n_cells, n_latent\) array of at least 2 cells, got shape "
                  r"\(5,\)"),
    (np.zeros((1, 3)), r"at least 2 cells, got shape \(1, 3\)"),
    (np.array([[0.0, np.nan], [1.0, 2.0]]), "z has NaN or infinite entries"),
])
def test_bad_latents_are_refused_with_the_reason(z, message):
    with pytest.raises(ValueError, match=message):
        latent_activity(z)


@pytest.mark.parametrize("threshold", [0.0, -0.01, float("nan")])
def test_a_threshold_that_is_not_positive_is_refused(threshold):
    with pytest.raises(ValueError, match="threshold must be positive"):
        inactive_latents(np.eye(3), threshold=threshold)
