"""Cells whose covariates are unknown (new cells whose type is to be predicted)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyro_causalcell import CellData, InVAE, fit, latent
from pyro_causalcell.data import DataValidationError
from pyro_causalcell.simulate import invariant_spurious


@pytest.fixture(scope="module")
def adata():
    adata = invariant_spurious(n_cells=120, n_genes=30, seed=3)
    adata.obs["donor"] = np.where(np.arange(120) % 2, "d1", "d2")
    adata.obs["qc"] = np.linspace(0.0, 1.0, 120)
    return adata


@pytest.fixture(scope="module")
def data(adata):
    return CellData.from_anndata(adata, domain_key="domain", label_key="label",
                                 categorical_covariate_keys=["donor"],
                                 continuous_covariate_keys=["qc"])


def test_unknown_covariates_are_not_read_and_carry_none(adata, data):
    new = adata.copy()
    del new.obs["label"], new.obs["donor"], new.obs["qc"]
    encoded = CellData.from_anndata(new, schema=data.schema, unknown=["label", "donor", "qc"])
    assert encoded.schema == data.schema  # still the model's schema
    assert encoded.label is None and encoded.covariate_values("label") is None
    assert set(encoded.covariates) == set()
    torch.testing.assert_close(encoded.domain, data.domain)
    # the user's AnnData keeps what it had
    assert list(new.obs.columns) == ["domain"]


def test_a_missing_column_offers_unknown(adata, data):
    new = adata.copy()
    del new.obs["label"]
    with pytest.raises(DataValidationError,
                       match=r"no column 'label'.*'label'.*unknown=\['label'\]"):
        CellData.from_anndata(new, schema=data.schema)


@pytest.mark.parametrize("kwargs, message", [
    (dict(unknown=["label"]), r"unknown=\['label'\] needs schema=..."),
    (dict(unknown=["cell_cycle"], schema=True), r"unknown=\['cell_cycle'\]: the schema carries"),
])
def test_bad_unknown_is_named(adata, data, kwargs, message):
    if kwargs.pop("schema", False):
        kwargs["schema"] = data.schema
    with pytest.raises(DataValidationError, match=message):
        CellData.from_anndata(adata, **kwargs)


def test_the_model_refuses_unknown_covariates_but_the_guide_does_not_need_them(adata, data):
    torch.manual_seed(0)
    model = InVAE(data.schema, n_latent_inv=2, n_latent_spur=1, n_hidden=8,
                  encode_spurious=True)
    new = CellData.from_anndata(adata, schema=data.schema, unknown=["label"])
    np.testing.assert_allclose(latent(model, new), latent(model, data), rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match=r"leave \['label'\] unknown.*the model observes"):
        fit(model, new, max_epochs=1, progress=False)
    no_domain = CellData.from_anndata(adata, schema=data.schema, unknown=["domain"])
    with pytest.raises(ValueError, match=r"leave \['domain'\] unknown.*encode_spurious=True"):
        latent(model, no_domain)
    counts_only = InVAE(data.schema, n_latent_inv=2, n_hidden=8)  # the default
    assert latent(counts_only, no_domain).shape == (120, 2)
