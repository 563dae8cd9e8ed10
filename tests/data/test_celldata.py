"""``CellData.from_anndata``: encodings, sparse storage, minibatches, schema round trips and
validation errors."""

from __future__ import annotations

import copy
import re

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from pyro_causalcell.data import (
    CellBatch,
    CellData,
    CellSchema,
    ControlLikePerturbationWarning,
    DataValidationError,
    DenseCounts,
    NonIntegerCountsWarning,
    SparseCounts,
)

pytestmark = pytest.mark.usefixtures("seeded")


# ---------------------------------------------------------------------- helpers
def snapshot(adata: ad.AnnData) -> dict:
    """Deep copies of everything a user could see change, including raw sparse arrays."""
    snap = {
        "X": copy.deepcopy(adata.X),
        "obs": adata.obs.copy(deep=True),
        "var": adata.var.copy(deep=True),
        "layers": {k: copy.deepcopy(v) for k, v in adata.layers.items()},
        "uns": copy.deepcopy(dict(adata.uns)),
        "obsm": {k: copy.deepcopy(v) for k, v in adata.obsm.items()},
        "obs_names": list(adata.obs_names),
        "var_names": list(adata.var_names),
    }
    return snap


def assert_matrix_identical(now, before) -> None:
    assert type(now) is type(before)
    if sp.issparse(before):
        # the stored arrays themselves, not only the matrix they represent
        for attr in ("indptr", "indices", "data"):
            np.testing.assert_array_equal(getattr(now, attr), getattr(before, attr))
        assert now.dtype == before.dtype
    else:
        assert now.dtype == before.dtype
        np.testing.assert_array_equal(now, before)


def assert_unchanged(adata: ad.AnnData, snap: dict) -> None:
    assert_matrix_identical(adata.X, snap["X"])
    pd.testing.assert_frame_equal(adata.obs, snap["obs"])
    pd.testing.assert_frame_equal(adata.var, snap["var"])
    assert set(adata.layers.keys()) == set(snap["layers"])
    for key, value in snap["layers"].items():
        assert_matrix_identical(adata.layers[key], value)
    assert dict(adata.uns) == snap["uns"]
    assert set(adata.obsm.keys()) == set(snap["obsm"])
    for key, value in snap["obsm"].items():
        np.testing.assert_array_equal(adata.obsm[key], value)
    assert list(adata.obs_names) == snap["obs_names"]
    assert list(adata.var_names) == snap["var_names"]


def raises(match: str):
    return pytest.raises(DataValidationError, match=re.escape(match))


# ---------------------------------------------------------------------- encodings
def test_shapes_gene_order_and_obs_names(adata, all_keys, layout):
    data = CellData.from_anndata(adata, **all_keys)
    assert data.n_cells == len(data) == layout.n_cells
    assert data.counts.shape == (layout.n_cells, len(layout.genes))
    assert data.schema.genes == tuple(layout.genes)  # var order kept, not sorted
    assert data.obs_names == [f"cell{i}" for i in range(layout.n_cells)]
    np.testing.assert_array_equal(data.dense_counts(), adata.X)


def test_perturbations_are_multi_hot_with_control_all_zeros(adata, all_keys, layout):
    data = CellData.from_anndata(adata, **all_keys)
    assert data.schema.perturbations == ("KO_a", "KO_b")  # sorted atoms, control excluded
    assert data.schema.control == "ctrl"
    expected_row = {"ctrl": [0, 0], "KO_a": [1, 0], "KO_b": [0, 1], "KO_a+KO_b": [1, 1]}
    assert list(adata.obs["perturbation"]) == [layout.perturbations[i % 4]
                                               for i in range(layout.n_cells)]
    expected = torch.tensor([expected_row[p] for p in adata.obs["perturbation"]],
                            dtype=torch.float32)
    assert data.perturbation.dtype == torch.float32
    torch.testing.assert_close(data.perturbation, expected, rtol=0, atol=0)
    control = adata.obs["perturbation"].to_numpy() == "ctrl"
    assert (data.perturbation[torch.as_tensor(control)] == 0).all()
    assert (data.perturbation[torch.as_tensor(~control)].sum(1) >= 1).all()


def test_combination_with_spaces_and_without_control(make_adata):
    adata = make_adata()
    adata.obs["perturbation"] = ["A + B", "A", "B", "C"] * 3
    data = CellData.from_anndata(adata, perturbation_key="perturbation")
    assert data.schema.perturbations == ("A", "B", "C")
    assert data.schema.control is None
    torch.testing.assert_close(
        data.perturbation[:4],
        torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0]]))


@pytest.mark.parametrize("name", ["ctrl", "Non-Targeting", "NT"])
def test_a_control_like_perturbation_without_control_is_named(make_adata, name):
    adata = make_adata()
    adata.obs["perturbation"] = [name, "A", "B", name] * 3
    with pytest.warns(ControlLikePerturbationWarning,
                      match=re.escape(f"holds {name!r} (6 cells), read as a perturbation with "
                                      f"effects of its own because control=None. If these cells "
                                      f"are unperturbed, pass control={name!r}.")):
        data = CellData.from_anndata(adata, perturbation_key="perturbation")
    assert name in data.schema.perturbations  # the data are encoded as asked, not guessed


def test_a_control_like_perturbation_counts_its_combinations(make_adata):
    adata = make_adata()
    adata.obs["perturbation"] = ["ctrl", "A", "ctrl + B", "B"] * 3
    with pytest.warns(ControlLikePerturbationWarning, match=re.escape("holds 'ctrl' (6 cells)")):
        CellData.from_anndata(adata, perturbation_key="perturbation")


def test_no_control_like_warning_with_control_or_other_names(make_adata, recwarn):
    adata = make_adata()
    adata.obs["perturbation"] = ["ctrl", "A", "B", "controlled_gene"] * 3
    CellData.from_anndata(adata, perturbation_key="perturbation", control="ctrl")
    adata.obs["perturbation"] = ["A", "B", "controlled_gene", "NTC1"] * 3
    CellData.from_anndata(adata, perturbation_key="perturbation")
    assert not [w for w in recwarn if w.category is ControlLikePerturbationWarning]


def test_domain_and_label_are_indices_of_sorted_categories(adata, all_keys, layout):
    data = CellData.from_anndata(adata, **all_keys)
    assert data.schema.domains == ("donor_1", "donor_2", "donor_3")
    assert data.schema.labels == ("B", "T")
    assert set(adata.obs["domain"]) == set(layout.domains)
    expected_domain = [sorted(layout.domains).index(d) for d in adata.obs["domain"]]
    expected_label = [sorted(layout.labels).index(v) for v in adata.obs["label"]]
    assert data.domain.dtype == torch.long and data.label.dtype == torch.long
    assert data.domain.tolist() == expected_domain
    assert data.label.tolist() == expected_label
    assert data.schema.n_domains == 3 and data.schema.n_labels == 2


def test_dose_and_library_key_columns(adata, all_keys, layout):
    data = CellData.from_anndata(adata, library_key="size_factor", **all_keys)
    torch.testing.assert_close(data.dose, torch.linspace(0.0, 1.0, layout.n_cells))
    torch.testing.assert_close(
        data.library, torch.as_tensor(adata.obs["size_factor"].to_numpy(), dtype=torch.float32))
    assert data.schema.dose_key == "dose" and data.schema.library_key == "size_factor"


def test_library_defaults_to_row_sums(adata):
    data = CellData.from_anndata(adata)
    torch.testing.assert_close(data.library, torch.as_tensor(adata.X.sum(1)))
    assert data.perturbation is None and data.domain is None
    assert data.label is None and data.dose is None


def test_layer_is_used_instead_of_x(make_adata):
    adata = make_adata()
    adata.X = adata.layers["logged"].copy()  # X holds log data, counts live in a layer
    data = CellData.from_anndata(adata, layer="counts")
    np.testing.assert_array_equal(data.dense_counts(), adata.layers["counts"])
    torch.testing.assert_close(data.library, torch.as_tensor(adata.layers["counts"].sum(1)))
    assert data.schema.layer == "counts"


def test_integer_counts_are_accepted_without_warning(adata, recwarn):
    adata.X = adata.X.astype(np.int64)
    data = CellData.from_anndata(adata)
    assert not [w for w in recwarn if issubclass(w.category, NonIntegerCountsWarning)]
    assert data.counts.values.dtype == torch.float32


# ---------------------------------------------------------------------- storage and batches
def test_sparse_input_stays_sparse_and_batches_match_dense_rows(sparse_adata, all_keys, layout):
    data = CellData.from_anndata(sparse_adata, **all_keys)
    assert isinstance(data.counts, SparseCounts)
    reference = sparse_adata.X.toarray()
    index = [7, 0, 11, 3, 3, 5]  # unordered, with a repeat
    batch = data.batch(index)
    assert isinstance(batch, CellBatch)
    assert batch.counts.shape == (len(index), len(layout.genes))
    np.testing.assert_array_equal(batch.counts.numpy(), reference[index])
    assert batch.index.tolist() == index
    assert batch.n_cells == layout.n_cells
    torch.testing.assert_close(batch.perturbation, data.perturbation[index])
    assert batch.domain.tolist() == data.domain[index].tolist()
    assert batch.label.tolist() == data.label[index].tolist()
    torch.testing.assert_close(batch.dose, data.dose[index])
    torch.testing.assert_close(batch.library, torch.as_tensor(reference[index].sum(1)))
    np.testing.assert_array_equal(data.dense_counts(), reference)


def test_sparse_and_dense_inputs_encode_identically(adata, sparse_adata, all_keys, layout):
    from_dense = CellData.from_anndata(adata, **all_keys)
    from_sparse = CellData.from_anndata(sparse_adata, **all_keys)
    assert isinstance(from_dense.counts, DenseCounts)
    index = torch.arange(layout.n_cells)
    torch.testing.assert_close(from_dense.counts.rows(index), from_sparse.counts.rows(index))
    torch.testing.assert_close(from_dense.counts.row_sums(), from_sparse.counts.row_sums())
    torch.testing.assert_close(from_dense.library, from_sparse.library)
    assert from_dense.schema == from_sparse.schema


def test_csc_input_is_read_correctly(make_adata):
    adata = make_adata()
    adata.X = sp.csc_matrix(adata.X)
    data = CellData.from_anndata(adata)
    assert isinstance(data.counts, SparseCounts)
    np.testing.assert_array_equal(data.dense_counts(), adata.X.toarray())


def test_sparse_with_unsorted_indices_gives_correct_rows():
    # row 0 stores columns (2, 0), row 1 stores (1, 0): valid CSR, indices not sorted
    X = sp.csr_matrix((np.array([5.0, 6.0, 7.0, 8.0]), np.array([2, 0, 1, 0]),
                       np.array([0, 2, 4])), shape=(2, 3))
    data = CellData.from_anndata(ad.AnnData(X=X))
    np.testing.assert_array_equal(data.batch([1, 0]).counts.numpy(),
                                  np.array([[8.0, 7.0, 0.0], [6.0, 0.0, 5.0]]))


def test_sparse_with_duplicate_entries_sums_them():
    # a non-canonical CSR: row 0 stores column 1 twice (1 + 3); scipy sums duplicates
    X = sp.csr_matrix((np.array([1.0, 2.0, 3.0, 4.0]), np.array([1, 0, 1, 2]),
                       np.array([0, 3, 4])), shape=(2, 3))
    expected = np.array([[2.0, 4.0, 0.0], [0.0, 0.0, 4.0]])
    np.testing.assert_array_equal(X.toarray(), expected)
    data = CellData.from_anndata(ad.AnnData(X=X))
    np.testing.assert_array_equal(data.batch([0, 1]).counts.numpy(), expected)
    # the library (row sums) and the counts the model sees must agree
    torch.testing.assert_close(data.batch([0, 1]).counts.sum(1), data.library)


@pytest.mark.parametrize("sparse", [False, True])
def test_shuffled_batches_cover_every_cell_once(sparse, all_keys, make_adata, layout):
    data = CellData.from_anndata(make_adata(sparse=sparse), **all_keys)
    generator = torch.Generator().manual_seed(3)
    batches = list(data.batches(5, shuffle=True, generator=generator))
    assert [len(b) for b in batches] == [5, 5, 2]
    seen = torch.cat([b.index for b in batches])
    assert sorted(seen.tolist()) == list(range(layout.n_cells))
    assert seen.tolist() != list(range(layout.n_cells))  # actually shuffled (fixed seed)
    reference = data.dense_counts()
    for b in batches:
        assert b.n_cells == layout.n_cells
        np.testing.assert_array_equal(b.counts.numpy(), reference[b.index.numpy()])


def test_batches_over_a_subset_use_its_size_as_plate_size(adata):
    data = CellData.from_anndata(adata)
    subset = torch.tensor([10, 2, 4, 6, 8, 1, 0])
    batches = list(data.batches(3, subset, shuffle=True,
                                generator=torch.Generator().manual_seed(0)))
    seen = torch.cat([b.index for b in batches])
    assert sorted(seen.tolist()) == sorted(subset.tolist())
    assert all(b.n_cells == len(subset) for b in batches)
    ordered = list(data.batches(3, subset))
    assert torch.cat([b.index for b in ordered]).tolist() == subset.tolist()


def test_batch_to_device_keeps_values(adata, all_keys):
    batch = CellData.from_anndata(adata, **all_keys).batch([1, 2])
    moved = batch.to("cpu")
    assert isinstance(moved, CellBatch) and moved.n_cells == batch.n_cells
    torch.testing.assert_close(moved.counts, batch.counts)
    assert moved.domain.tolist() == batch.domain.tolist()


# ---------------------------------------------------------------------- user data untouched
@pytest.mark.parametrize("sparse", [False, True])
def test_user_anndata_is_not_modified(sparse, all_keys, make_adata, layout):
    adata = make_adata(sparse=sparse)
    snap = snapshot(adata)
    data = CellData.from_anndata(adata, library_key="size_factor", **all_keys)
    assert_unchanged(adata, snap)
    # nor by encoding a second AnnData with the schema (genes reordered on the fly)
    other = make_adata(sparse=sparse, seed=1)[:, list(reversed(layout.genes))].copy()
    other_snap = snapshot(other)
    encoded = CellData.from_anndata(other, schema=data.schema)
    assert encoded.schema.genes == tuple(layout.genes)
    assert_unchanged(other, other_snap)
    assert_unchanged(adata, snap)


def test_user_anndata_with_layer_is_not_modified(make_adata):
    adata = make_adata()
    adata.layers["counts"] = sp.csr_matrix(adata.layers["counts"])
    snap = snapshot(adata)
    CellData.from_anndata(adata, layer="counts", perturbation_key="perturbation",
                          control="ctrl")
    assert_unchanged(adata, snap)


def test_user_sparse_matrix_with_unsorted_indices_is_not_modified():
    X = sp.csr_matrix((np.array([5.0, 6.0, 7.0, 8.0]), np.array([2, 0, 1, 0]),
                       np.array([0, 2, 4])), shape=(2, 3))
    adata = ad.AnnData(X=X)
    snap = snapshot(adata)
    CellData.from_anndata(adata)
    assert_unchanged(adata, snap)


# ---------------------------------------------------------------------- schema round trip
def test_schema_round_trip_reorders_genes_and_keeps_category_indices(all_keys, make_adata,
                                                                    layout):
    fitted = CellData.from_anndata(make_adata(), library_key="size_factor", **all_keys)
    new = make_adata(seed=5)
    keep = new.obs["perturbation"].isin(["ctrl", "KO_b"]).to_numpy() & (
        new.obs["domain"] == "donor_3").to_numpy()
    new = new[keep, list(reversed(layout.genes))].copy()
    assert new.n_obs >= 2 and set(new.obs["perturbation"]) == {"ctrl", "KO_b"}
    encoded = CellData.from_anndata(new, schema=fitted.schema)

    assert encoded.schema == fitted.schema
    assert encoded.schema.genes == tuple(layout.genes)
    expected_counts = new[:, layout.genes].X
    np.testing.assert_array_equal(encoded.dense_counts(), expected_counts)
    # same category indices as at fit time, although only a subset is present
    assert encoded.perturbation.shape == (new.n_obs, 2)
    expected_pert = [[0.0, 1.0] if p == "KO_b" else [0.0, 0.0] for p in new.obs["perturbation"]]
    assert encoded.perturbation.tolist() == expected_pert
    assert encoded.domain.tolist() == [2] * new.n_obs
    assert encoded.label.tolist() == [("B", "T").index(v) for v in new.obs["label"]]
    torch.testing.assert_close(
        encoded.library, torch.as_tensor(new.obs["size_factor"].to_numpy(), dtype=torch.float32))


def test_schema_allows_an_all_zero_gene_at_prediction(adata, make_adata):
    fitted = CellData.from_anndata(adata)
    new = make_adata(seed=2)
    new.X[:, 2] = 0.0
    new.X[:, 0] += 1.0  # keep every cell non-empty
    encoded = CellData.from_anndata(new, schema=fitted.schema)
    assert (encoded.dense_counts()[:, 2] == 0).all()


def test_schema_encodes_data_without_control_cells(adata, all_keys):
    """Prediction data need not contain control cells: the control value is known."""
    fitted = CellData.from_anndata(adata, **all_keys)
    perturbed = adata[adata.obs["perturbation"] != "ctrl"].copy()
    encoded = CellData.from_anndata(perturbed, schema=fitted.schema)
    assert encoded.schema.perturbations == fitted.schema.perturbations
    assert (encoded.perturbation.sum(1) >= 1).all()


def test_schema_dict_round_trip(adata, all_keys, layout):
    schema = CellData.from_anndata(adata, layer="counts", library_key="size_factor",
                                   **all_keys).schema
    as_dict = schema.to_dict()
    assert isinstance(as_dict["genes"], list) and as_dict["genes"] == layout.genes
    assert as_dict["perturbations"] == ["KO_a", "KO_b"]
    assert all(not isinstance(v, tuple) for v in as_dict.values())
    restored = CellSchema.from_dict(as_dict)
    assert restored == schema
    assert restored.differences(schema) == []
    with pytest.raises(ValueError, match="unknown fields"):
        CellSchema.from_dict({**as_dict, "colour": "red"})


def test_schema_differences_name_each_field():
    base = CellSchema(genes=("a", "b", "c"), domain_key="batch", domains=("x", "y"))
    reordered = CellSchema(genes=("c", "b", "a"), domain_key="batch", domains=("x", "y"))
    assert base.differences(reordered) == ["genes: same values in a different order"]
    other = CellSchema(genes=("a", "b", "d"), domain_key="donor", domains=("x", "y"))
    diffs = base.differences(other)
    assert len(diffs) == 2
    assert diffs[0] == "genes: missing ['c'], unexpected ['d']"
    assert diffs[1] == "domain_key: 'batch' vs 'donor'"


def test_schema_repr_and_counts(adata, all_keys, layout):
    schema = CellData.from_anndata(adata, **all_keys).schema
    assert schema.n_genes == len(layout.genes) and schema.n_perturbations == 2
    text = repr(schema)
    assert "6 genes" in text and "2 perturbations" in text and "3 domains" in text


# ---------------------------------------------------------------------- validation errors
@pytest.mark.parametrize("field", ["perturbation_key", "domain_key", "label_key", "dose_key",
                                   "library_key"])
def test_missing_obs_key(adata, field):
    with raises(f"{field}='nope' is not a column of adata.obs"):
        CellData.from_anndata(adata, **{field: "nope"})


def test_missing_layer(adata):
    with raises("layer='raw' is not in adata.layers"):
        CellData.from_anndata(adata, layer="raw")


def test_nan_in_counts(adata):
    adata.X[3, 2] = np.nan
    with raises("adata.X has 1 NaN or infinite entries"):
        CellData.from_anndata(adata)


def test_inf_in_counts_of_a_layer(adata):
    adata.layers["counts"][1, 1] = np.inf
    adata.layers["counts"][2, 1] = -np.inf
    with raises("adata.layers['counts'] has 2 NaN or infinite entries"):
        CellData.from_anndata(adata, layer="counts")


def test_inf_in_sparse_counts(sparse_adata):
    sparse_adata.X.data[0] = np.inf
    with raises("NaN or infinite entries"):
        CellData.from_anndata(sparse_adata)


@pytest.mark.parametrize("dtype", [np.float32, np.int64])
def test_negative_counts(adata, dtype):
    adata.X = adata.X.astype(dtype)
    adata.X[0, 0] = -1
    with raises("adata.X has 1 negative entries"):
        CellData.from_anndata(adata)


@pytest.mark.parametrize("sparse", [False, True])
def test_all_zero_cell(sparse, make_adata):
    adata = make_adata()
    adata.X[4, :] = 0.0
    if sparse:
        adata.X = sp.csr_matrix(adata.X)
    with raises("1 cells with zero total counts (e.g. ['cell4'])"):
        CellData.from_anndata(adata)


def test_all_zero_gene(adata):
    adata.X[:, 3] = 0.0
    with raises("1 genes with zero counts in every cell (e.g. ['Xist'])"):
        CellData.from_anndata(adata)


def test_empty_anndata(make_adata):
    adata = make_adata()[:0].copy()
    with raises("is empty (0 cells"):
        CellData.from_anndata(adata)


def test_control_value_absent(adata):
    with raises("control='DMSO' never occurs in adata.obs['perturbation']"):
        CellData.from_anndata(adata, perturbation_key="perturbation", control="DMSO")


def test_control_without_perturbation_key(adata):
    with raises("control=... was given without perturbation_key"):
        CellData.from_anndata(adata, control="ctrl")


@pytest.mark.parametrize("field", ["perturbation", "domain", "label"])
def test_nan_in_categorical_obs_column(adata, field):
    column = adata.obs[field].astype(object).to_numpy(copy=True)  # writable under pandas 3
    column[5] = np.nan
    adata.obs[field] = column
    with raises(f"adata.obs[{field!r}] ({field}_key) has 1 missing values"):
        CellData.from_anndata(adata, **{f"{field}_key": field})


@pytest.mark.parametrize("key, field", [("dose", "dose_key"), ("size_factor", "library_key")])
def test_nan_in_numeric_obs_column(adata, key, field):
    adata.obs.loc["cell2", key] = np.nan
    with raises(f"adata.obs[{key!r}] ({field}) has 1 NaN or infinite values"):
        CellData.from_anndata(adata, **{field: key})


def test_non_positive_library(adata):
    adata.obs.loc["cell0", "size_factor"] = 0.0
    with raises("library sizes must be positive"):
        CellData.from_anndata(adata, library_key="size_factor")


def test_non_numeric_dose(adata, layout):
    adata.obs["dose"] = ["high", "low"] * (layout.n_cells // 2)
    with raises("adata.obs['dose'] (dose_key) must be numeric"):
        CellData.from_anndata(adata, dose_key="dose")


def test_unseen_perturbation_at_prediction(adata, all_keys, make_adata, layout):
    schema = CellData.from_anndata(adata, **all_keys).schema
    new = make_adata()
    new.obs["perturbation"] = ["ctrl", "KO_a+KO_c"] * (layout.n_cells // 2)
    with raises("adata.obs['perturbation'] (perturbation_key) has categories not seen at fit "
                "time: ['KO_c']"):
        CellData.from_anndata(new, schema=schema)


def test_unseen_domain_at_prediction(adata, all_keys, make_adata):
    schema = CellData.from_anndata(adata, **all_keys).schema
    new = make_adata()
    new.obs.loc["cell1", "domain"] = "donor_9"
    with raises("adata.obs['domain'] (domain_key) has categories not seen at fit time: "
                "['donor_9']"):
        CellData.from_anndata(new, schema=schema)


def test_unseen_label_at_prediction(adata, all_keys, make_adata, layout):
    schema = CellData.from_anndata(adata, **all_keys).schema
    new = make_adata()
    new.obs["label"] = ["NK"] * layout.n_cells
    with raises("has categories not seen at fit time: ['NK']"):
        CellData.from_anndata(new, schema=schema)


def test_genes_differing_from_schema(adata, make_adata, layout):
    schema = CellData.from_anndata(adata).schema
    new = make_adata()
    new.var_names = [*layout.genes[:-1], "Foxp3"]
    with raises("adata.var_names differ from the fitted schema's genes: 1 schema genes are "
                "missing (e.g. ['Zfp1'])"):
        CellData.from_anndata(new, schema=schema)


def test_key_conflicting_with_schema(adata, all_keys):
    schema = CellData.from_anndata(adata, **all_keys).schema
    with raises("domain_key='label' differs from the fitted schema's domain_key='domain'"):
        CellData.from_anndata(adata, schema=schema, domain_key="label")
    # the same value as the schema is fine
    data = CellData.from_anndata(adata, schema=schema, domain_key="domain")
    assert data.schema == schema


def test_non_integer_counts_warn_but_build(adata):
    adata.X = adata.X * 0.5 + 0.25
    with pytest.warns(NonIntegerCountsWarning, match="non-integer values"):
        data = CellData.from_anndata(adata)
    np.testing.assert_allclose(data.dense_counts(), adata.X)


def test_validation_error_is_a_value_error():
    assert issubclass(DataValidationError, ValueError)


# ---------------------------------------------------------------------- silent corruption refused
def test_duplicated_gene_names_are_refused(adata):
    adata.var_names = ["Gm5", "Actb", "Actb", "Xist", "Mki67", "Gm5"]
    snap = snapshot(adata)
    with raises("adata.var_names has 2 gene names that occur more than once (e.g. ['Actb', "
                "'Gm5']); genes are matched by name, so repeats cannot be told apart. Make them "
                "unique first: adata.var_names_make_unique()"):
        CellData.from_anndata(adata)
    assert_unchanged(adata, snap)


@pytest.mark.filterwarnings("ignore:Variable names are not unique")
def test_new_data_with_swapped_or_missing_duplicates_is_refused(adata, layout):
    schema = CellData.from_anndata(adata).schema
    swapped = adata.copy()
    swapped.var_names = [*layout.genes[:-1], layout.genes[0]]  # a repeat in place of one gene
    with raises("adata.var_names has 1 gene names that occur more than once (e.g. ['Gm5'])"):
        CellData.from_anndata(swapped, schema=schema)
    doubled = ad.concat([adata, adata[:, :2]], axis=1, merge="same")  # Gm5, Actb twice
    with raises("occur more than once (e.g. ['Actb', 'Gm5'])"):
        CellData.from_anndata(doubled, schema=schema)


@pytest.mark.parametrize("value", ["", " ", "+", "KO_a+", "+KO_b", "KO_a++KO_b"])
def test_empty_perturbation_names_are_refused_naming_the_cells(adata, all_keys, value):
    column = adata.obs["perturbation"].to_numpy(dtype=object)
    column[[1, 7]] = value
    adata.obs["perturbation"] = column
    with raises(f"adata.obs['perturbation'] (perturbation_key) has values with an empty "
                f"perturbation name [{value!r}] in 2 cells (e.g. ['cell1', 'cell7']); they "
                "would be read as control cells."):
        CellData.from_anndata(adata, **all_keys)


@pytest.mark.parametrize("field", ["perturbation", "domain", "label"])
@pytest.mark.parametrize("text", ["nan", "None", "<NA>"])
def test_missing_values_written_as_text_are_refused_naming_the_cells(adata, all_keys, field,
                                                                      text):
    column = adata.obs[field].to_numpy(dtype=object)
    column[4] = text
    adata.obs[field] = column
    with raises(f"adata.obs[{field!r}] ({field}_key) has the value(s) [{text!r}] in 1 cells "
                "(e.g. ['cell4']): missing values turned into text"):
        CellData.from_anndata(adata, **all_keys)


@pytest.mark.parametrize("sparse", [False, True])
def test_float64_counts_beyond_float32_are_refused(make_adata, sparse):
    adata = make_adata()
    adata.X = adata.X.astype(np.float64)
    adata.X[2, 3] = 1e39
    if sparse:
        adata.X = sp.csr_matrix(adata.X)
    with raises("adata.X has 1 entries above 3.4e+38, the largest float32 value"):
        CellData.from_anndata(adata)
