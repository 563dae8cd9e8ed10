"""The cell-types simulator: reproducibility, documented outputs, and its causal structure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyro
import pytest
import scipy.sparse as sp
import torch
from pyro import poutine

from pyro_causalcell import CellData
from pyro_causalcell.simulate import CellTypeWorld, cell_types, cell_types_program

pytestmark = pytest.mark.usefixtures("seeded")

SIZES = dict(n_cells=120, n_genes=25, n_cell_types=3, n_batches=2, n_latent=4)


@pytest.fixture(scope="module")
def adata():
    return cell_types(**SIZES, seed=4)


def assert_same_adata(a, b) -> None:
    assert (a.X != b.X).nnz == 0
    np.testing.assert_array_equal(a.X.indptr, b.X.indptr)
    np.testing.assert_array_equal(a.X.indices, b.X.indices)
    np.testing.assert_array_equal(a.obsm["z_true"], b.obsm["z_true"])
    pd.testing.assert_frame_equal(a.obs, b.obs)
    assert a.uns["simulation"] == b.uns["simulation"]


# ---------------------------------------------------------------------- reproducibility
def test_same_seed_gives_identical_data_whatever_the_global_rng(adata):
    torch.manual_seed(999)
    np.random.seed(999)
    assert_same_adata(cell_types(**SIZES, seed=4), adata)


def test_simulation_leaves_the_global_torch_rng_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    cell_types(n_cells=20, n_genes=10, seed=0)
    torch.testing.assert_close(torch.rand(3), expected, rtol=0, atol=0)


def test_different_seeds_give_different_data(adata):
    other = cell_types(**SIZES, seed=5)
    assert (other.X != adata.X).nnz > 0
    assert not np.allclose(other.obsm["z_true"], adata.obsm["z_true"])
    assert other.uns["simulation"]["seed"] == 5


# ---------------------------------------------------------------------- documented outputs
def test_documented_keys_shapes_and_dtypes(adata):
    n, g = SIZES["n_cells"], SIZES["n_genes"]
    assert adata.shape == (n, g)
    assert sp.isspmatrix_csr(adata.X) or isinstance(adata.X, sp.csr_array)
    assert np.issubdtype(adata.X.dtype, np.integer)
    assert adata.X.data.min() >= 0
    assert np.asarray(adata.X.sum(1)).min() > 0  # no empty cells
    assert list(adata.obs_names[:2]) == ["cell_0", "cell_1"]
    assert list(adata.var_names[:2]) == ["gene_0", "gene_1"]

    assert list(adata.obs.columns) == ["cell_type", "batch"]
    for column in ("cell_type", "batch"):
        assert isinstance(adata.obs[column].dtype, pd.CategoricalDtype)
    assert set(adata.obs["cell_type"]) <= {f"type_{i}" for i in range(SIZES["n_cell_types"])}
    assert set(adata.obs["batch"]) == {"batch_0", "batch_1"}

    z = adata.obsm["z_true"]
    assert z.shape == (n, SIZES["n_latent"])
    assert np.issubdtype(z.dtype, np.floating) and np.isfinite(z).all()
    assert adata.uns["simulation"] == dict(
        name="cell_types", **SIZES, batch_strength=1.0, library_size=2000.0, seed=4)


def test_latents_cluster_by_cell_type(adata):
    z = adata.obsm["z_true"]
    types = adata.obs["cell_type"].to_numpy()
    within = np.mean([z[types == t].std(0).mean() for t in np.unique(types)])
    assert 0.7 < within < 1.3  # z ~ Normal(centre[label], I)
    assert z.std(0).mean() > 1.5 * within  # centres are spread apart


def test_library_size_follows_the_argument():
    small = cell_types(n_cells=300, n_genes=30, library_size=500.0, seed=1)
    large = cell_types(n_cells=300, n_genes=30, library_size=5000.0, seed=1)
    median = lambda a: np.median(np.asarray(a.X.sum(1)).ravel())  # noqa: E731
    assert 350 < median(small) < 700
    assert 3500 < median(large) < 7000


# ---------------------------------------------------------------------- causal structure
@pytest.fixture(scope="module")
def world() -> CellTypeWorld:
    generator = torch.Generator().manual_seed(0)
    return CellTypeWorld.draw(n_genes=15, n_cell_types=3, n_batches=2, n_latent=3,
                              batch_strength=1.0, library_size=1000.0, generator=generator)


def run(program, world, n_cells: int, seed: int):
    torch.manual_seed(seed)
    return poutine.trace(program).get_trace(world, n_cells)


def test_program_sites_and_shapes(world):
    trace = run(cell_types_program, world, 40, seed=0)
    sites = [n for n, s in trace.nodes.items() if s["type"] == "sample"]
    assert sites == ["cells", "label", "domain", "z", "library", "expression", "counts"]
    assert trace.nodes["z"]["value"].shape == (40, 3)
    assert trace.nodes["counts"]["value"].shape == (40, 15)
    torch.testing.assert_close(trace.nodes["expression"]["value"].sum(-1),
                               trace.nodes["library"]["value"], rtol=1e-5, atol=1e-3)
    torch.testing.assert_close(trace.nodes["_RETURN"]["value"], trace.nodes["counts"]["value"])


def test_do_domain_changes_exactly_the_descendants_of_domain(world):
    n_cells = 60
    factual = run(cell_types_program, world, n_cells, seed=3)
    target = torch.ones(n_cells, dtype=torch.long)
    intervened = run(pyro.do(cell_types_program, data={"domain": target}), world, n_cells,
                     seed=3)

    for name in ("label", "z", "library"):  # not descendants of domain
        assert torch.equal(intervened.nodes[name]["value"], factual.nodes[name]["value"]), name
    assert torch.equal(intervened.nodes["domain"]["value"], factual.nodes["domain"]["value"])

    before = factual.nodes["expression"]["value"]
    after = intervened.nodes["expression"]["value"]
    already = factual.nodes["domain"]["value"] == 1
    assert 0 < already.sum() < n_cells
    torch.testing.assert_close(after[already], before[already], rtol=1e-6, atol=0)
    assert ((after[~already] - before[~already]).abs().amax(-1) > 1e-3).all()
    # the new expression is the structural equation evaluated at the intervened domain
    z, library = factual.nodes["z"]["value"], factual.nodes["library"]["value"]
    expected = torch.softmax(world.expression_logits(z, target), -1) * library[:, None]
    torch.testing.assert_close(after, expected, rtol=1e-5, atol=1e-4)
    assert not torch.equal(intervened.nodes["counts"]["value"], factual.nodes["counts"]["value"])


def test_do_label_moves_z_but_not_domain_or_library(world):
    n_cells = 60
    factual = run(cell_types_program, world, n_cells, seed=4)
    target = torch.zeros(n_cells, dtype=torch.long)
    intervened = run(pyro.do(cell_types_program, data={"label": target}), world, n_cells, seed=4)
    for name in ("domain", "library"):
        assert torch.equal(intervened.nodes[name]["value"], factual.nodes[name]["value"]), name
    # the same exogenous noise, shifted to the new centre
    shift = world.centres[target] - world.centres[factual.nodes["label"]["value"]]
    torch.testing.assert_close(intervened.nodes["z"]["value"],
                               factual.nodes["z"]["value"] + shift)


# ---------------------------------------------------------------------- data layer
def test_simulated_data_encodes_as_cell_data(adata):
    data = CellData.from_anndata(adata, domain_key="batch", label_key="cell_type")
    assert data.n_cells == SIZES["n_cells"]
    assert data.schema.n_genes == SIZES["n_genes"]
    assert data.schema.domains == ("batch_0", "batch_1")
    assert data.schema.labels == tuple(sorted(set(adata.obs["cell_type"])))
    np.testing.assert_array_equal(
        np.array(data.schema.domains)[data.domain.numpy()], adata.obs["batch"].astype(str))
    np.testing.assert_array_equal(
        np.array(data.schema.labels)[data.label.numpy()], adata.obs["cell_type"].astype(str))
    np.testing.assert_array_equal(data.dense_counts(), adata.X.toarray())
    np.testing.assert_array_equal(data.library.numpy(), np.asarray(adata.X.sum(1)).ravel())
    assert type(data.counts).__name__ == "SparseCounts"
