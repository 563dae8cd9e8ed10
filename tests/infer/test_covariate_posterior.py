"""The model's own posterior over a categorical covariate, enumerated over its categories."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_causalcell import CellData, InVAE, covariate_posterior, fit
from pyro_causalcell.models.components import cells_plate, observe_all
from pyro_causalcell.simulate import invariant_spurious


class LabelMeans(nn.Module):
    """z ~ N(mu[label], 1); the guide puts z at the first gene's count (almost surely)."""

    def __init__(self, schema, means):
        super().__init__()
        self.schema, self.means = schema, torch.as_tensor(means)

    def model(self, batch):
        with cells_plate(batch):
            label = observe_all(batch, self.schema)["label"]
            pyro.sample("z", dist.Normal(self.means[label], 1.0))

    def guide(self, batch):
        with cells_plate(batch):
            pyro.sample("z", dist.Normal(batch.counts[:, 0], 1e-6))


@pytest.fixture(scope="module")
def adata():
    return invariant_spurious(n_cells=50, n_genes=10, seed=2)


def test_closed_form_posterior_and_unknown_labels(adata):
    data = CellData.from_anndata(adata, label_key="label")
    means = [0.0, 2.0, 5.0]
    model = LabelMeans(data.schema, means)
    unlabelled = CellData.from_anndata(adata, schema=data.schema, unknown=["label"])
    posterior = covariate_posterior(model, unlabelled, n_samples=2)
    x = adata.X[:, 0].toarray().ravel()
    log_joint = -0.5 * (x[:, None] - np.asarray(means)[None, :]) ** 2
    expected = np.exp(log_joint - log_joint.max(1, keepdims=True))
    expected /= expected.sum(1, keepdims=True)
    assert list(posterior.columns) == list(data.schema.labels)
    assert list(posterior.index) == list(adata.obs_names)
    np.testing.assert_allclose(posterior.to_numpy(), expected, rtol=1e-4, atol=1e-5)
    # a known label is ignored: the posterior is the same
    pd.testing.assert_frame_equal(covariate_posterior(model, data, n_samples=2), posterior)


def test_bad_site_is_named(adata):
    data = CellData.from_anndata(adata, label_key="label", continuous_covariate_keys=None)
    model = LabelMeans(data.schema, [0.0, 1.0, 2.0])
    with pytest.raises(ValueError, match="'domain' is not a categorical covariate"):
        covariate_posterior(model, data, "domain")
    with pytest.raises(ValueError, match="n_samples must be >= 1"):
        covariate_posterior(model, data, n_samples=0)


def test_invae_classifies_new_cells_of_unknown_type(adata):
    train = invariant_spurious(n_cells=800, n_genes=60, seed=4)
    data = CellData.from_anndata(train, domain_key="domain", label_key="label")
    torch.manual_seed(0)
    model = InVAE(data.schema, n_latent_inv=4, n_latent_spur=2, n_hidden=32)
    fit(model, data, max_epochs=40, lr=3e-3, progress=False, device="cpu")
    new = invariant_spurious(n_cells=300, n_genes=60, seed=5, world_seed=4)
    truth = new.obs["label"].astype(str).to_numpy()
    del new.obs["label"]
    cells = CellData.from_anndata(new, schema=data.schema, unknown=["label"])
    posterior = covariate_posterior(model, cells, n_samples=5)
    np.testing.assert_allclose(posterior.sum(1), 1.0, rtol=1e-5)
    assert np.mean(posterior.idxmax(1).to_numpy() == truth) > 0.7
