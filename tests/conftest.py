"""Shared fixtures: tiny AnnData objects of raw counts with every kind of covariate."""

from __future__ import annotations

from types import SimpleNamespace

import anndata as ad
import numpy as np
import pandas as pd
import pyro
import pytest
import scipy.sparse as sp

N_CELLS = 12
GENES = ["Gm5", "Actb", "Cd3e", "Xist", "Mki67", "Zfp1"]  # deliberately not sorted

# perturbation values cycle through control, single and combined perturbations
PERTURBATIONS = ["ctrl", "KO_b", "KO_a", "KO_a+KO_b"]
DOMAINS = ["donor_2", "donor_1", "donor_3"]
LABELS = ["T", "B"]


def make_counts(n_cells: int = N_CELLS, n_genes: int = len(GENES), seed: int = 0) -> np.ndarray:
    """Integer counts with no empty cell and no empty gene (and plenty of zeros)."""
    rng = np.random.default_rng(seed)
    counts = rng.poisson(1.5, size=(n_cells, n_genes)) * rng.integers(0, 2, (n_cells, n_genes))
    counts[np.arange(n_cells), np.arange(n_cells) % n_genes] += 1 + np.arange(n_cells)
    counts[0, :] += 1  # every gene has at least one count
    return counts.astype(np.float32)


def make_adata(n_cells: int = N_CELLS, *, sparse: bool = False, seed: int = 0) -> ad.AnnData:
    counts = make_counts(n_cells, seed=seed)
    obs = pd.DataFrame(
        {
            "perturbation": [PERTURBATIONS[i % 4] for i in range(n_cells)],
            "domain": [DOMAINS[i % 3] for i in range(n_cells)],
            "label": pd.Categorical([LABELS[i % 2] for i in range(n_cells)]),
            "dose": np.linspace(0.0, 1.0, n_cells),
            "size_factor": np.arange(1, n_cells + 1, dtype=np.float64) * 10.0,
        },
        index=[f"cell{i}" for i in range(n_cells)],
    )
    var = pd.DataFrame({"highly_variable": [True] * len(GENES)}, index=GENES)
    X = sp.csr_matrix(counts) if sparse else counts.copy()
    adata = ad.AnnData(X=X, obs=obs, var=var)
    adata.layers["counts"] = counts.copy()
    adata.layers["logged"] = np.log1p(counts)
    adata.uns["note"] = {"source": "fixture"}
    adata.obsm["X_pca"] = np.arange(n_cells * 2, dtype=np.float64).reshape(n_cells, 2)
    return adata


@pytest.fixture(name="make_adata")
def make_adata_fixture():
    """Factory ``make_adata(n_cells=12, *, sparse=False, seed=0)`` for fresh AnnData objects."""
    return make_adata


@pytest.fixture
def layout() -> SimpleNamespace:
    """What the fixture AnnData objects contain (gene order, obs value cycles)."""
    return SimpleNamespace(n_cells=N_CELLS, genes=list(GENES), perturbations=list(PERTURBATIONS),
                           domains=list(DOMAINS), labels=list(LABELS))


@pytest.fixture
def adata() -> ad.AnnData:
    """12 cells x 6 genes, dense float32 integer counts, every covariate column."""
    return make_adata()


@pytest.fixture
def sparse_adata() -> ad.AnnData:
    """Same as ``adata`` but ``X`` is a CSR matrix."""
    return make_adata(sparse=True)


@pytest.fixture
def all_keys() -> dict:
    return dict(perturbation_key="perturbation", control="ctrl", domain_key="domain",
                label_key="label", dose_key="dose")


@pytest.fixture
def seeded():
    """Empty Pyro param store and fixed seeds (Python, NumPy, torch) for the test.

    Opt in per module with ``pytestmark = pytest.mark.usefixtures("seeded")``.
    """
    pyro.clear_param_store()
    pyro.set_rng_seed(0)
    yield
    pyro.clear_param_store()


@pytest.fixture
def replayed():
    """``replayed(model, batch) -> (guide_trace, model_trace)``: the guide traced, and the
    model traced while replaying the guide's latents."""
    from pyro import poutine

    def traces(model, batch):
        guide = poutine.trace(model.guide).get_trace(batch)
        return guide, poutine.trace(poutine.replay(model.model, trace=guide)).get_trace(batch)

    return traces
