"""Property-based fuzzing of ``CellData.from_anndata``: every generated AnnData either encodes
to a valid ``CellData`` or fails with a ``DataValidationError``, and is never modified.

The examples are derandomised (the same ones on every run, so CI cannot flake); set
``CAUSALCELL_FUZZ_EXAMPLES`` to explore more, e.g. 20000 as the issue's fuzzing did.
"""

from __future__ import annotations

import os
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_celldata import assert_unchanged, snapshot

from pyro_causalcell.data import (CellData, ControlLikePerturbationWarning, DataValidationError,
                                  NonIntegerCountsWarning)

N_EXAMPLES = int(os.environ.get("CAUSALCELL_FUZZ_EXAMPLES", "300"))

CATEGORIES = ["ctrl", "A", "B", "A+B", "B + A", "é", "0", "1.5"]
ODD_CATEGORIES = ["", " ", "+", "A+", "nan", "None", "<NA>", None, np.nan]
SPECIAL_VALUES = [np.nan, np.inf, -np.inf, -1.0, 0.5, 1e39, 2.0 ** 31]


def column(draw, n: int, usual: list, odd: list) -> list:
    """``n`` values from ``usual``; in about one column of five, some from ``odd`` too."""
    pool = usual + odd if draw(st.integers(0, 4)) == 0 else usual
    return [draw(st.sampled_from(pool)) for _ in range(n)]


@st.composite
def anndatas(draw) -> tuple[ad.AnnData, dict]:
    n_cells = draw(st.sampled_from([0] + [*range(1, 8)] * 3))
    n_genes = draw(st.sampled_from([0] + [*range(1, 6)] * 3))
    dtype = draw(st.sampled_from([np.int32, np.int64, np.float32, np.float64]))
    counts = np.array(draw(st.lists(st.integers(0, 30) | st.integers(1, 30), min_size=n_cells * n_genes,
                                    max_size=n_cells * n_genes)),
                      dtype=np.float64).reshape(n_cells, n_genes)
    if counts.size and draw(st.integers(0, 3)) == 0:  # one odd value somewhere
        i, j = draw(st.integers(0, n_cells - 1)), draw(st.integers(0, n_genes - 1))
        counts[i, j] = draw(st.sampled_from(SPECIAL_VALUES))
    if np.issubdtype(dtype, np.integer):
        counts = np.nan_to_num(counts, nan=0, posinf=0, neginf=-1).round()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # inf / 1e39 cast to float32
        counts = counts.astype(dtype)
    layout = draw(st.sampled_from(["dense", "csr", "csc"]))
    matrix = counts if layout == "dense" else getattr(sp, f"{layout}_matrix")(counts)

    genes = [f"g{i}" for i in range(n_genes)]
    if n_genes > 1 and draw(st.integers(0, 3)) == 0:  # a repeated gene name
        genes[draw(st.integers(1, n_genes - 1))] = genes[0]
    obs = pd.DataFrame({
        "perturbation": column(draw, n_cells, CATEGORIES, ODD_CATEGORIES),
        "domain": column(draw, n_cells, CATEGORIES, ODD_CATEGORIES),
        "label": pd.Categorical(column(draw, n_cells, ["T", "B"], ["nan"])),
        "dose": column(draw, n_cells, [0.0, 1.0, 2.5], [np.nan, np.inf]),
        "size": column(draw, n_cells, [1.0, 10.0], [0.0, -3.0]),
    }, index=[f"c{i}" for i in range(n_cells)])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # duplicated var names
        adata = ad.AnnData(X=matrix, obs=obs, var=pd.DataFrame(index=genes))
    keys = {
        "perturbation_key": draw(st.sampled_from([None, "perturbation", "perturbation",
                                                  "absent"])),
        "control": draw(st.sampled_from([None, "ctrl", "ctrl", "DMSO"])),
        "domain_key": draw(st.sampled_from([None, "domain"])),
        "label_key": draw(st.sampled_from([None, "label"])),
        "dose_key": draw(st.sampled_from([None, "dose"])),
        "library_key": draw(st.sampled_from([None, "size"])),
    }
    return adata, keys


def ignore_expected_warnings() -> None:
    """Inside ``warnings.catch_warnings()``: silence what the generated data may rightly raise
    (float counts; 'ctrl' drawn with control=None)."""
    for category in (NonIntegerCountsWarning, ControlLikePerturbationWarning):
        warnings.simplefilter("ignore", category)


def assert_valid(data: CellData, adata: ad.AnnData) -> None:
    n, g = adata.shape
    assert data.counts.shape == (n, g) and data.n_cells == n
    counts = data.dense_counts()
    assert counts.dtype == np.float32 and np.isfinite(counts).all() and (counts >= 0).all()
    assert torch.isfinite(data.library).all() and (data.library > 0).all()
    assert len(set(data.schema.genes)) == g
    if data.perturbation is not None:
        assert data.perturbation.shape == (n, data.schema.n_perturbations)
        assert ((data.perturbation == 0) | (data.perturbation == 1)).all()
        assert all(p.strip() and p.lower() not in ("nan", "none") and "+" not in p
                   for p in data.schema.perturbations)
    for field, known in (("domain", data.schema.domains), ("label", data.schema.labels)):
        codes = getattr(data, field)
        if codes is not None:
            assert codes.dtype == torch.long and codes.shape == (n,)
            assert ((codes >= 0) & (codes < len(known))).all()
            assert "nan" not in known and "None" not in known
    if data.dose is not None:
        assert torch.isfinite(data.dose).all()


@settings(max_examples=N_EXAMPLES, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(anndatas())
def test_every_input_is_a_valid_celldata_or_a_named_error(case):
    adata, keys = case
    before = snapshot(adata)
    with warnings.catch_warnings():
        ignore_expected_warnings()
        try:
            data = CellData.from_anndata(adata, **keys)
        except DataValidationError as error:
            message = str(error)
            assert len(message) > 40 and ("adata" in message or "=" in message), message
        else:
            assert_valid(data, adata)
    assert_unchanged(adata, before)


def test_the_fuzzer_reaches_both_outcomes():
    """The generator is not degenerate: it yields valid data and errors alike."""
    outcomes = {"valid": 0, "error": 0}

    @settings(max_examples=200, deadline=None, derandomize=True,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(anndatas())
    def count(case):
        adata, keys = case
        with warnings.catch_warnings():
            ignore_expected_warnings()
            try:
                CellData.from_anndata(adata, **keys)
                outcomes["valid"] += 1
            except DataValidationError:
                outcomes["error"] += 1

    count()
    assert outcomes["valid"] >= 20 and outcomes["error"] >= 20, outcomes


if __name__ == "__main__":  # pragma: no cover
    pytest.main([__file__, "-q"])
