"""Latent arithmetic (scGen's estimator): the shift in closed form on a linear model, its
errors, and recovery of a known additive latent shift on a simulation."""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from torch import nn

from pyro_causalcell import VAE, CellData, fit, latent_arithmetic
from pyro_causalcell.infer import latent_shift
from pyro_causalcell.models.components import cells_plate, observe_all

pytestmark = pytest.mark.usefixtures("seeded")


class LinearModel(nn.Module):
    """z ~ N(0, I); expression = z @ B + 10; guide N(log1p(counts[:, :2]), 0.1): every
    posterior mean and every decoded value is known in closed form."""

    def __init__(self, schema):
        super().__init__()
        self.schema = schema
        self.B = nn.Parameter(torch.tensor([[1.0, 2.0, 0.0, 0.0, 1.0, 0.0],
                                            [0.0, -1.0, 3.0, 0.0, 0.0, 1.0]]))

    def model(self, batch):
        with cells_plate(batch):
            observe_all(batch, self.schema)
            z = pyro.sample("z", dist.Normal(batch.library.new_zeros(len(batch), 2), 1.0)
                            .to_event(1))
            pyro.deterministic("expression", z @ self.B + 10.0, event_dim=1)

    def guide(self, batch):
        with cells_plate(batch):
            pyro.sample("z", dist.Normal(torch.log1p(batch.counts[:, :2]), 0.1).to_event(1))


@pytest.fixture
def linear(adata, all_keys):
    data = CellData.from_anndata(adata, **all_keys)
    return LinearModel(data.schema), data, np.log1p(adata.X[:, :2])


def test_the_shift_is_the_difference_of_posterior_means(linear, adata):
    model, data, z = linear
    perturbation = adata.obs["perturbation"].to_numpy()
    expected = z[perturbation == "KO_a"].mean(0) - z[perturbation == "ctrl"].mean(0)
    delta, groups = latent_shift(model, data, key="perturbation", source="ctrl", target="KO_a")
    np.testing.assert_allclose(delta, expected, rtol=1e-5)
    assert groups == []
    # balanced: the mean over domains holding both of each domain's own difference
    domain = adata.obs["domain"].to_numpy()
    per_domain = [z[(perturbation == "KO_a") & (domain == d)].mean(0)
                  - z[(perturbation == "ctrl") & (domain == d)].mean(0)
                  for d in sorted(set(domain))
                  if ((perturbation == "KO_a") & (domain == d)).any()
                  and ((perturbation == "ctrl") & (domain == d)).any()]
    delta, groups = latent_shift(model, data, key="perturbation", source="ctrl", target="KO_a",
                                 group_by="domain")
    np.testing.assert_allclose(delta, np.mean(per_domain, 0), rtol=1e-5)
    assert len(groups) == len(per_domain) >= 1


def test_prediction_decodes_the_shifted_latent_of_each_cell(linear, adata):
    model, data, z = linear
    cells = adata[adata.obs["perturbation"] == "ctrl"].copy()
    result = latent_arithmetic(model, data, cells, key="label", source="T", target="B")
    delta = np.asarray(result.uns["latent_arithmetic"]["delta"])
    labels = adata.obs["label"].to_numpy()
    np.testing.assert_allclose(delta, z[labels == "B"].mean(0) - z[labels == "T"].mean(0),
                               rtol=1e-5)
    shifted = np.log1p(cells.X[:, :2]) + delta
    np.testing.assert_allclose(result.X, shifted @ model.B.detach().cpu().numpy() + 10.0, rtol=1e-5)
    assert list(result.obs_names) == list(cells.obs_names)
    assert list(result.var_names) == list(data.schema.genes)
    assert result.obs["intervention"].iloc[0] == "latent arithmetic z + (label: B - T)"
    assert list(cells.obs.columns) == ["perturbation", "domain", "label", "dose",
                                       "size_factor"]  # the user's obs is untouched


def test_bad_queries_get_named_errors(linear, adata):
    model, data, _ = linear
    with pytest.raises(ValueError, match="'KO_z' is not a known perturbation"):
        latent_shift(model, data, key="perturbation", source="ctrl", target="KO_z")
    only_controls = CellData.from_anndata(adata[adata.obs["perturbation"] == "ctrl"].copy(),
                                          schema=data.schema)
    with pytest.raises(ValueError, match="needs reference cells of both perturbation='ctrl' "
                                         "and perturbation='KO_a'"):
        latent_shift(model, only_controls, key="perturbation", source="ctrl", target="KO_a")
    with pytest.raises(ValueError, match="group_by='dose' must be a categorical"):
        latent_shift(model, data, key="label", source="T", target="B", group_by="dose")
    with pytest.raises(ValueError, match="output='mean'"):
        latent_arithmetic(model, data, data, key="label", source="T", target="B",
                          output="mean")
    with pytest.raises(KeyError, match="no sample site 'z_inv'"):
        latent_shift(model, data, key="label", source="T", target="B", site="z_inv")


def test_a_known_additive_latent_shift_is_recovered_in_a_context_never_treated(unseen_pair):
    """No interaction: treatment_1 shifts z_t alike in every covariate. A VAE that never saw
    covariate_0 treated predicts it by latent arithmetic; its response (log fold change of
    mean expression) against the simulator's own counterfactual of those cells."""
    seed = 2
    truth = unseen_pair(seed, 3000, n_genes=100, n_covariates=4, n_treatments=1,
                        interaction_strength=0.0, dose_levels=None)
    train = truth.adata[~truth.held_out].copy()
    data = CellData.from_anndata(train, perturbation_key="treatment", control="control",
                                 domain_key="covariate")
    torch.manual_seed(seed)
    model = VAE(data.schema, n_latent=12, use_domain=False)
    fit(model, data, max_epochs=100, lr=3e-3, kl_warmup_epochs=20, progress=False,
        device="cpu", seed=seed)
    controls = truth.adata[truth.controls].copy()
    predicted = latent_arithmetic(model, data, controls, key="perturbation", source="control",
                                  target="treatment_1", group_by="domain")
    reconstructed = latent_arithmetic(model, data, controls, key="perturbation",
                                      source="control", target="control")
    predicted_lfc = truth.lfc(predicted.X, reconstructed.X)
    correlation = np.corrcoef(predicted_lfc, truth.true_lfc)[0, 1]
    slope = np.polyfit(truth.true_lfc, predicted_lfc, 1)[0]
    print(f"latent arithmetic LFC vs simulator: r = {correlation:.3f}, slope = {slope:.2f}")
    assert correlation > 0.8, correlation
    assert 0.5 < slope < 1.5, slope
