"""Named covariates: categorical and continuous obs columns carried by the schema, by name."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch

from pyro_causalcell.data import CellData, CellSchema, DataValidationError
from pyro_causalcell.data.schema import Covariate


@pytest.fixture
def covariate_adata(make_adata):
    adata = make_adata()
    adata.obs["donor"] = ["d2", "d1", "d3"] * 4
    adata.obs["qc"] = np.arange(12, dtype=float) * 2.0 + 1.0
    return adata


def encode(adata, **kwargs):
    return CellData.from_anndata(adata, categorical_covariate_keys=["donor"],
                                 continuous_covariate_keys=["qc"], **kwargs)


def test_categories_are_indices_and_numbers_are_standardised(covariate_adata):
    data = encode(covariate_adata)
    donor, qc = data.schema.covariates
    assert donor == Covariate("donor", "categorical", categories=("d1", "d2", "d3"))
    assert qc.kind == "continuous" and qc.mean == pytest.approx(12.0)
    assert qc.std == pytest.approx(np.std(np.arange(12) * 2.0 + 1.0))
    assert data.covariates["donor"].tolist() == [1, 0, 2] * 4
    np.testing.assert_allclose(data.covariates["qc"].numpy(),
                               (covariate_adata.obs["qc"] - qc.mean) / qc.std, rtol=1e-6)
    assert data.schema.categorical_covariate_keys == ("donor",)
    assert data.schema.continuous_covariate_keys == ("qc",)
    assert "covariates='donor' (categorical), 'qc' (continuous)" in repr(data.schema)


def test_batches_carry_covariates_by_name(covariate_adata):
    data = encode(covariate_adata)
    batch = data.batch([4, 0])
    assert batch.covariates["donor"].tolist() == [0, 1]
    assert torch.equal(batch.covariates["qc"], data.covariates["qc"][[4, 0]])
    moved = batch.to("cpu")
    assert set(moved.covariates) == {"donor", "qc"}
    assert set(data.to("cpu").covariates) == {"donor", "qc"}


def test_new_data_is_encoded_with_the_fitted_categories_and_statistics(covariate_adata):
    data = encode(covariate_adata)
    new = covariate_adata[[0, 3, 6]].copy()  # only donor d2, different qc values
    encoded = CellData.from_anndata(new, schema=data.schema)
    assert encoded.schema == data.schema
    assert encoded.covariates["donor"].tolist() == [1, 1, 1]
    np.testing.assert_allclose(encoded.covariates["qc"].numpy(),
                               data.covariates["qc"][[0, 3, 6]].numpy(), rtol=1e-6)
    unseen = covariate_adata.copy()
    unseen.obs["donor"] = ["d9"] * 12
    with pytest.raises(DataValidationError, match=re.escape(
            "adata.obs['donor'] (categorical_covariate_keys) has categories not seen at fit "
            "time: ['d9']")):
        CellData.from_anndata(unseen, schema=data.schema)


def test_schema_round_trip_keeps_covariates(covariate_adata):
    schema = encode(covariate_adata).schema
    assert CellSchema.from_dict(schema.to_dict()) == schema
    old = {k: v for k, v in schema.to_dict().items() if k != "covariates"}
    assert CellSchema.from_dict(old).covariates == ()  # files written before covariates


@pytest.mark.parametrize("kwargs, message", [
    (dict(categorical_covariate_keys=["counts"]),
     "covariate keys ['counts'] are site names of the model protocol"),
    (dict(categorical_covariate_keys=["z_inv"]), "covariate keys ['z_inv'] are site names"),
    (dict(categorical_covariate_keys=["donor"], continuous_covariate_keys=["donor"]),
     "covariate keys ['donor'] are given more than once"),
    (dict(domain_key="donor", categorical_covariate_keys=["donor"]),
     "adata.obs['donor'] is already domain_key; a column is encoded once"),
    (dict(categorical_covariate_keys=["nope"]),
     "categorical_covariate_keys='nope' is not a column of adata.obs"),
    (dict(continuous_covariate_keys=["donor"]),
     "adata.obs['donor'] (continuous_covariate_keys) must be numeric"),
])
def test_bad_covariate_keys_are_named(covariate_adata, kwargs, message):
    with pytest.raises(DataValidationError, match=re.escape(message)):
        CellData.from_anndata(covariate_adata, **kwargs)


def test_missing_values_in_covariates_are_refused(covariate_adata):
    covariate_adata.obs.loc["cell3", "qc"] = np.nan
    with pytest.raises(DataValidationError, match=re.escape(
            "adata.obs['qc'] (continuous_covariate_keys) has 1 NaN or infinite values")):
        CellData.from_anndata(covariate_adata, continuous_covariate_keys=["qc"])


def test_a_constant_column_is_not_divided_by_zero(covariate_adata):
    covariate_adata.obs["qc"] = 5.0
    data = CellData.from_anndata(covariate_adata, continuous_covariate_keys="qc")
    assert data.schema.covariate("qc").std == 1.0
    assert torch.equal(data.covariates["qc"], torch.zeros(12))
    with pytest.raises(KeyError, match=r"no covariate 'age'; its covariates are \['qc'\]"):
        data.schema.covariate("age")
