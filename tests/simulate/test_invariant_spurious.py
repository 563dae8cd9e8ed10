"""The invariant / spurious (inVAE-style) simulator: reproducibility, documented outputs, the
label-domain correlation knob and causal structure."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyro
import pytest
import scipy.sparse as sp
import torch
from pyro import poutine

from pyro_causalcell import CellData
from pyro_causalcell.simulate.invariant_spurious import (
    InvariantSpuriousWorld,
    invariant_spurious,
    invariant_spurious_program,
)

pytestmark = pytest.mark.usefixtures("seeded")

SIZES = dict(n_cells=150, n_genes=25, n_labels=3, n_domains=2, n_latent_inv=3, n_latent_spur=2)


@pytest.fixture(scope="module")
def adata():
    return invariant_spurious(**SIZES, label_domain_correlation=0.5, seed=4)


def assert_same_adata(a, b) -> None:
    assert (a.X != b.X).nnz == 0
    np.testing.assert_array_equal(a.X.indices, b.X.indices)
    for key in ("z_inv", "z_spur"):
        np.testing.assert_array_equal(a.obsm[key], b.obsm[key])
    pd.testing.assert_frame_equal(a.obs, b.obs)
    assert a.uns["simulation"] == b.uns["simulation"]
    for key in ("true_label_means", "true_domain_means", "true_label_to_domain"):
        np.testing.assert_array_equal(a.uns[key], b.uns[key])


def cramers_v(a, b) -> float:
    """Association of two categorical arrays, 0 (independent) to 1 (one determines the other)."""
    table = pd.crosstab(a, b).to_numpy().astype(float)
    expected = table.sum(1, keepdims=True) * table.sum(0, keepdims=True) / table.sum()
    chi2 = ((table - expected) ** 2 / expected).sum()
    return float(np.sqrt(chi2 / table.sum() / (min(table.shape) - 1)))


# ---------------------------------------------------------------------- reproducibility
def test_same_seed_gives_identical_data_whatever_the_global_rng(adata):
    torch.manual_seed(999)
    np.random.seed(999)
    assert_same_adata(invariant_spurious(**SIZES, label_domain_correlation=0.5, seed=4), adata)


def test_simulation_leaves_the_global_rngs_alone():
    torch.manual_seed(123)
    np.random.seed(123)
    expected = torch.rand(3), np.random.rand(3)
    torch.manual_seed(123)
    np.random.seed(123)
    invariant_spurious(n_cells=20, n_genes=10, seed=0)
    torch.testing.assert_close(torch.rand(3), expected[0], rtol=0, atol=0)
    np.testing.assert_array_equal(np.random.rand(3), expected[1])


def test_seed_changes_cells_and_world_seed_keeps_the_world(adata):
    other = invariant_spurious(**SIZES, label_domain_correlation=0.5, seed=5)
    assert (other.X != adata.X).nnz > 0
    assert not np.allclose(other.uns["true_label_means"], adata.uns["true_label_means"])
    test_set = invariant_spurious(**SIZES, label_domain_correlation=0.0, seed=5, world_seed=4)
    assert not np.allclose(test_set.obsm["z_inv"], adata.obsm["z_inv"])
    for key in ("true_label_means", "true_domain_means", "true_label_to_domain"):
        np.testing.assert_array_equal(test_set.uns[key], adata.uns[key])


# ---------------------------------------------------------------------- documented outputs
def test_documented_keys_shapes_and_dtypes(adata):
    n, g = SIZES["n_cells"], SIZES["n_genes"]
    assert adata.shape == (n, g)
    assert sp.isspmatrix_csr(adata.X) and adata.X.dtype == np.int64
    assert adata.X.data.min() >= 0 and np.asarray(adata.X.sum(1)).min() > 0
    assert list(adata.obs_names[:2]) == ["cell_0", "cell_1"]
    assert list(adata.var_names[:2]) == ["gene_0", "gene_1"]
    assert list(adata.obs.columns) == ["label", "domain"]
    assert list(adata.obs["label"].cat.categories) == ["label_0", "label_1", "label_2"]
    assert list(adata.obs["domain"].cat.categories) == ["domain_0", "domain_1"]

    assert adata.obsm["z_inv"].shape == (n, SIZES["n_latent_inv"])
    assert adata.obsm["z_spur"].shape == (n, SIZES["n_latent_spur"])
    assert adata.obsm["z_inv"].dtype == adata.obsm["z_spur"].dtype == np.float32
    assert adata.uns["true_label_means"].shape == (SIZES["n_labels"], SIZES["n_latent_inv"])
    assert adata.uns["true_domain_means"].shape == (SIZES["n_domains"], SIZES["n_latent_spur"])
    np.testing.assert_array_equal(adata.uns["true_label_to_domain"], [0, 1, 0])
    assert adata.uns["simulation"] == dict(
        name="invariant_spurious", **SIZES, label_strength=2.5, domain_strength=2.0,
        label_domain_correlation=0.5, library_size=2000.0, seed=4, world_seed=4)


def test_latents_follow_their_own_parent_only():
    adata = invariant_spurious(n_cells=1200, n_genes=10, n_labels=2, n_domains=2,
                               label_domain_correlation=0.0, seed=2)
    label = adata.obs["label"].cat.codes.to_numpy()
    domain = adata.obs["domain"].cat.codes.to_numpy()
    z_inv, z_spur = adata.obsm["z_inv"], adata.obsm["z_spur"]
    for k in range(2):
        np.testing.assert_allclose(z_inv[label == k].mean(0), adata.uns["true_label_means"][k],
                                   atol=0.2)
        np.testing.assert_allclose(z_spur[domain == k].mean(0),
                                   adata.uns["true_domain_means"][k], atol=0.2)
        # without the association, the domain does not move z_inv, nor the label z_spur
        np.testing.assert_allclose(z_inv[(label == 0) & (domain == k)].mean(0),
                                   adata.uns["true_label_means"][0], atol=0.3)
        np.testing.assert_allclose(z_spur[(domain == 0) & (label == k)].mean(0),
                                   adata.uns["true_domain_means"][0], atol=0.3)


def test_writes_to_h5ad(adata, tmp_path):
    adata.write_h5ad(tmp_path / "invariant_spurious.h5ad")


def test_correlation_knob_sets_the_label_domain_association():
    sizes = dict(n_cells=600, n_genes=10, n_labels=3, n_domains=3, seed=1)
    association = [cramers_v(a.obs["label"], a.obs["domain"])
                   for a in (invariant_spurious(**sizes, label_domain_correlation=rho)
                             for rho in (0.0, 0.25, 0.5, 0.75, 1.0))]
    assert np.all(np.diff(association) > 0.05), association
    assert association[0] < 0.15
    assert association[-1] == pytest.approx(1.0)
    tied = invariant_spurious(**sizes, label_domain_correlation=1.0)
    np.testing.assert_array_equal(tied.obs["domain"].cat.codes, tied.obs["label"].cat.codes)


def test_correlation_outside_the_unit_interval_is_refused():
    with pytest.raises(ValueError, match="label_domain_correlation"):
        invariant_spurious(n_cells=10, n_genes=5, label_domain_correlation=1.5)


# ---------------------------------------------------------------------- causal structure
@pytest.fixture(scope="module")
def world() -> InvariantSpuriousWorld:
    return InvariantSpuriousWorld.draw(n_genes=20, n_labels=3, n_domains=3, n_latent_inv=2,
                                       n_latent_spur=2, label_strength=2.5, domain_strength=2.0,
                                       library_size=1000.0,
                                       generator=torch.Generator().manual_seed(0))


def run(program, world, n_cells: int, seed: int, rho: float):
    torch.manual_seed(seed)
    return poutine.trace(program).get_trace(world, n_cells, rho)


def value(trace, name):
    return trace.nodes[name]["value"]


def assert_unchanged(factual, intervened, names) -> None:
    for name in names:
        assert torch.equal(value(intervened, name), value(factual, name)), name


def test_program_sites_and_shapes(world):
    trace = run(invariant_spurious_program, world, 40, seed=0, rho=0.5)
    sites = [n for n, s in trace.nodes.items() if s["type"] == "sample"]
    assert sites == ["cells", "label", "domain", "z_inv", "z_spur", "library", "expression",
                     "counts"]
    assert value(trace, "z_inv").shape == (40, 2) and value(trace, "counts").shape == (40, 20)
    torch.testing.assert_close(value(trace, "expression").sum(-1), value(trace, "library"))
    assert torch.isfinite(trace.log_prob_sum())


@pytest.mark.parametrize("rho", [0.0, 0.7])
def test_do_domain_changes_exactly_the_descendants_of_the_domain(world, rho):
    n = 60
    factual = run(invariant_spurious_program, world, n, seed=3, rho=rho)
    target = torch.zeros(n, dtype=torch.long)
    intervened = run(pyro.do(invariant_spurious_program, data={"domain": target}), world, n,
                     seed=3, rho=rho)
    assert_unchanged(factual, intervened, ["label", "domain", "z_inv", "library"])
    before = value(factual, "domain")
    moved = before != target
    assert 0 < moved.sum() < n
    shift = world.domain_means[target] - world.domain_means[before]
    torch.testing.assert_close(value(intervened, "z_spur"), value(factual, "z_spur") + shift)
    changed = (value(intervened, "expression") != value(factual, "expression")).any(-1)
    assert torch.equal(changed, moved)
    assert not torch.equal(value(intervened, "counts"), value(factual, "counts"))


def test_do_label_moves_only_biology_when_label_and_domain_are_unassociated(world):
    n = 60
    factual = run(invariant_spurious_program, world, n, seed=4, rho=0.0)
    target = torch.full((n,), 2, dtype=torch.long)
    intervened = run(pyro.do(invariant_spurious_program, data={"label": target}), world, n,
                     seed=4, rho=0.0)
    assert_unchanged(factual, intervened, ["label", "domain", "z_spur", "library"])
    before = value(factual, "label")
    shift = world.label_means[target] - world.label_means[before]
    torch.testing.assert_close(value(intervened, "z_inv"), value(factual, "z_inv") + shift)
    changed = (value(intervened, "expression") != value(factual, "expression")).any(-1)
    assert torch.equal(changed, before != target)


def test_do_label_drags_the_tied_domain_along_when_fully_associated(world):
    n = 60
    factual = run(invariant_spurious_program, world, n, seed=4, rho=1.0)
    target = torch.full((n,), 2, dtype=torch.long)
    intervened = run(pyro.do(invariant_spurious_program, data={"label": target}), world, n,
                     seed=4, rho=1.0)
    assert_unchanged(factual, intervened, ["label", "library"])
    assert (value(intervened, "domain") == world.label_to_domain[2]).all()
    moved = value(factual, "domain") != value(intervened, "domain")
    changed_spur = (value(intervened, "z_spur") != value(factual, "z_spur")).any(-1)
    assert moved.any() and torch.equal(changed_spur, moved)
    # intervening on both holds the domain: only the biology moves
    both = run(pyro.do(invariant_spurious_program,
                       data={"label": target, "domain": value(factual, "domain")}),
               world, n, seed=4, rho=1.0)
    assert torch.equal(value(both, "z_spur"), value(factual, "z_spur"))
    assert torch.equal(value(both, "z_inv"), value(intervened, "z_inv"))


def test_the_anndata_is_the_documented_trace_of_the_program():
    adata = invariant_spurious(**SIZES, label_domain_correlation=0.3, seed=5, world_seed=4)
    world = InvariantSpuriousWorld.draw(
        n_genes=SIZES["n_genes"], n_labels=3, n_domains=2, n_latent_inv=3, n_latent_spur=2,
        label_strength=2.5, domain_strength=2.0, library_size=2000.0,
        generator=torch.Generator().manual_seed(4))
    trace = run(invariant_spurious_program, world, SIZES["n_cells"], seed=5, rho=0.3)
    np.testing.assert_array_equal(adata.X.toarray(), value(trace, "counts").numpy())
    for name in ("z_inv", "z_spur"):
        np.testing.assert_array_equal(adata.obsm[name], value(trace, name).numpy())
    np.testing.assert_array_equal(adata.obs["label"].cat.codes, value(trace, "label"))
    np.testing.assert_array_equal(adata.obs["domain"].cat.codes, value(trace, "domain"))


# ---------------------------------------------------------------------- data layer
def test_simulated_data_encodes_as_cell_data(adata):
    data = CellData.from_anndata(adata, domain_key="domain", label_key="label")
    assert data.n_cells == SIZES["n_cells"] and data.schema.n_genes == SIZES["n_genes"]
    assert data.schema.labels == ("label_0", "label_1", "label_2")
    assert data.schema.domains == ("domain_0", "domain_1")
    np.testing.assert_array_equal(data.label.numpy(), adata.obs["label"].cat.codes)
    np.testing.assert_array_equal(data.domain.numpy(), adata.obs["domain"].cat.codes)
    np.testing.assert_array_equal(data.dense_counts(), adata.X.toarray())
