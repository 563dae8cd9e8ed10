"""The shared / private (multiGroupVI-style) simulator: reproducibility, documented outputs,
private latents confined to their group, and causal structure."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyro
import pytest
import scipy.sparse as sp
import torch
from pyro import poutine
from pyro.infer.reparam import LocScaleReparam

from pyro_causalcell import CellData
from pyro_causalcell.simulate.shared_private import (
    SharedPrivateWorld,
    ZeroScaleNormal,
    shared_private,
    shared_private_program,
)

pytestmark = pytest.mark.usefixtures("seeded")

SIZES = dict(n_cells=150, n_genes=25, n_groups=3, n_latent_shared=3, n_latent_private=2)


@pytest.fixture(scope="module")
def adata():
    return shared_private(**SIZES, seed=4)


def assert_same_adata(a, b) -> None:
    assert (a.X != b.X).nnz == 0
    np.testing.assert_array_equal(a.X.indices, b.X.indices)
    for key in ("z_shared", "z_private"):
        np.testing.assert_array_equal(a.obsm[key], b.obsm[key])
    pd.testing.assert_frame_equal(a.obs, b.obs)
    assert a.uns["simulation"] == b.uns["simulation"]
    np.testing.assert_array_equal(a.uns["true_private_blocks"], b.uns["true_private_blocks"])


# ---------------------------------------------------------------------- reproducibility
def test_same_seed_gives_identical_data_whatever_the_global_rng(adata):
    torch.manual_seed(999)
    np.random.seed(999)
    assert_same_adata(shared_private(**SIZES, seed=4), adata)


def test_simulation_leaves_the_global_rngs_alone():
    torch.manual_seed(123)
    np.random.seed(123)
    expected = torch.rand(3), np.random.rand(3)
    torch.manual_seed(123)
    np.random.seed(123)
    shared_private(n_cells=20, n_genes=10, seed=0)
    torch.testing.assert_close(torch.rand(3), expected[0], rtol=0, atol=0)
    np.testing.assert_array_equal(np.random.rand(3), expected[1])


def test_seed_changes_cells_and_world_seed_keeps_the_world(adata):
    other = shared_private(**SIZES, seed=5)
    assert (other.X != adata.X).nnz > 0
    assert not np.allclose(other.obsm["z_shared"], adata.obsm["z_shared"])
    same_world = shared_private(**SIZES, seed=5, world_seed=4)  # see also the trace test below
    assert same_world.uns["simulation"]["world_seed"] == 4
    assert (same_world.X != adata.X).nnz > 0


# ---------------------------------------------------------------------- documented outputs
def test_documented_keys_shapes_and_dtypes(adata):
    n, g = SIZES["n_cells"], SIZES["n_genes"]
    assert adata.shape == (n, g)
    assert sp.isspmatrix_csr(adata.X) and adata.X.dtype == np.int64
    assert adata.X.data.min() >= 0 and np.asarray(adata.X.sum(1)).min() > 0
    assert list(adata.obs_names[:2]) == ["cell_0", "cell_1"]
    assert list(adata.var_names[:2]) == ["gene_0", "gene_1"]
    assert list(adata.obs.columns) == ["group"]
    assert list(adata.obs["group"].cat.categories) == ["background", "group_1", "group_2"]

    assert adata.obsm["z_shared"].shape == (n, SIZES["n_latent_shared"])
    assert adata.obsm["z_private"].shape == (n, 4)  # 2 groups with private blocks of 2
    assert adata.obsm["z_shared"].dtype == adata.obsm["z_private"].dtype == np.float32
    np.testing.assert_array_equal(adata.uns["true_private_blocks"],
                                  [[0, 0, 0, 0], [1, 1, 0, 0], [0, 0, 1, 1]])
    assert adata.uns["true_private_blocks"].dtype == bool
    assert adata.uns["simulation"] == dict(name="shared_private", **SIZES, background=True,
                                           library_size=2000.0, seed=4, world_seed=4)


def test_private_latents_are_zero_outside_their_group(adata):
    group = adata.obs["group"].cat.codes.to_numpy()
    active = adata.uns["true_private_blocks"][group]
    z_private = adata.obsm["z_private"]
    assert (z_private[~active] == 0).all()
    assert (z_private[active] != 0).all()
    assert (z_private[group == 0] == 0).all()  # the background group has none
    assert 0.6 < z_private[active].std() < 1.4
    assert 0.6 < adata.obsm["z_shared"].std(0).min() and adata.obsm["z_shared"].std(0).max() < 1.4


def test_without_background_every_group_has_a_private_block():
    adata = shared_private(n_cells=60, n_genes=12, n_groups=2, n_latent_private=3,
                           background=False, seed=1)
    assert list(adata.obs["group"].cat.categories) == ["group_0", "group_1"]
    np.testing.assert_array_equal(adata.uns["true_private_blocks"],
                                  [[1, 1, 1, 0, 0, 0], [0, 0, 0, 1, 1, 1]])
    active = adata.uns["true_private_blocks"][adata.obs["group"].cat.codes.to_numpy()]
    assert (adata.obsm["z_private"][~active] == 0).all()
    with pytest.raises(ValueError, match="private"):
        shared_private(n_cells=10, n_genes=5, n_groups=1, background=True)


def test_writes_to_h5ad(adata, tmp_path):
    adata.write_h5ad(tmp_path / "shared_private.h5ad")


# ---------------------------------------------------------------------- the zero-scale normal
def test_zero_scale_normal_is_a_point_mass_where_its_scale_is_zero():
    loc, scale = torch.tensor([0.5, 0.5, 0.5]), torch.tensor([0.0, 0.0, 2.0])
    d = ZeroScaleNormal(loc, scale)
    value = torch.tensor([0.5, 1.0, 1.0])
    log_prob = d.log_prob(value)
    assert log_prob[0] == 0 and log_prob[1] == -math.inf
    torch.testing.assert_close(log_prob[2], torch.distributions.Normal(0.5, 2.0).log_prob(
        torch.tensor(1.0)))
    assert (d.rsample((5,))[:, :2] == 0.5).all()
    with pytest.raises(ValueError):
        ZeroScaleNormal(loc, -scale, validate_args=True)


# ---------------------------------------------------------------------- causal structure
@pytest.fixture(scope="module")
def world() -> SharedPrivateWorld:
    return SharedPrivateWorld.draw(n_genes=20, n_groups=3, n_latent_shared=2, n_latent_private=2,
                                   background=True, library_size=1000.0,
                                   generator=torch.Generator().manual_seed(0))


def run(program, world, n_cells: int, seed: int):
    torch.manual_seed(seed)
    return poutine.trace(program).get_trace(world, n_cells)


def value(trace, name):
    return trace.nodes[name]["value"]


def test_program_sites_and_shapes(world):
    trace = run(shared_private_program, world, 40, seed=0)
    sites = [n for n, s in trace.nodes.items() if s["type"] == "sample"]
    assert sites == ["cells", "domain", "z_shared", "z_private", "library", "expression",
                     "counts"]
    assert value(trace, "z_shared").shape == (40, 2)
    assert value(trace, "z_private").shape == (40, 4)
    assert value(trace, "counts").shape == (40, 20)
    torch.testing.assert_close(value(trace, "expression").sum(-1), value(trace, "library"))
    assert torch.isfinite(trace.log_prob_sum())


def test_do_group_changes_exactly_the_descendants_of_the_group(world):
    n = 60
    factual = run(shared_private_program, world, n, seed=3)
    target = torch.full((n,), 2, dtype=torch.long)
    intervened = run(pyro.do(shared_private_program, data={"domain": target}), world, n, seed=3)
    for name in ("domain", "z_shared", "library"):
        assert torch.equal(value(intervened, name), value(factual, name)), name

    moved = value(factual, "domain") != target
    assert 0 < moved.sum() < n
    z_after, z_before = value(intervened, "z_private"), value(factual, "z_private")
    # every cell now has exactly group 2's block, and cells already there keep their latents
    active = world.private_blocks[2]
    assert (z_after[:, ~active] == 0).all() and (z_after[:, active] != 0).all()
    assert torch.equal(z_after[~moved], z_before[~moved])
    changed = (value(intervened, "expression") != value(factual, "expression")).any(-1)
    assert torch.equal(changed, moved)
    # moving cells into the background group switches their private latents off
    background = run(pyro.do(shared_private_program, data={"domain": torch.zeros_like(target)}),
                     world, n, seed=3)
    assert (value(background, "z_private") == 0).all()
    assert torch.equal(value(background, "z_shared"), value(factual, "z_shared"))


def test_the_exogenous_noise_is_recovered_by_loc_scale_reparam(world):
    reparam = poutine.reparam(shared_private_program,
                              config={"z_private": LocScaleReparam(0.0),
                                      "z_shared": LocScaleReparam(0.0)})
    plain, reparameterised = run(shared_private_program, world, 30, seed=1), run(reparam, world,
                                                                                  30, seed=1)
    for name in ("z_shared", "z_private", "expression"):
        torch.testing.assert_close(value(reparameterised, name), value(plain, name))
    noise = value(reparameterised, "z_private_decentered")
    active = world.private_blocks[value(plain, "domain")]
    torch.testing.assert_close(noise[active], value(plain, "z_private")[active])
    assert (noise[~active] != 0).all()  # drawn for every column, used only where active


def test_the_anndata_is_the_documented_trace_of_the_program():
    adata = shared_private(**SIZES, seed=5, world_seed=4)
    world = SharedPrivateWorld.draw(
        n_genes=SIZES["n_genes"], n_groups=3, n_latent_shared=3, n_latent_private=2,
        background=True, library_size=2000.0, generator=torch.Generator().manual_seed(4))
    trace = run(shared_private_program, world, SIZES["n_cells"], seed=5)
    np.testing.assert_array_equal(adata.X.toarray(), value(trace, "counts").numpy())
    for name in ("z_shared", "z_private"):
        np.testing.assert_array_equal(adata.obsm[name], value(trace, name).numpy())
    np.testing.assert_array_equal(adata.obs["group"].cat.codes, value(trace, "domain"))


# ---------------------------------------------------------------------- data layer
def test_simulated_data_encodes_as_cell_data(adata):
    data = CellData.from_anndata(adata, domain_key="group")
    assert data.n_cells == SIZES["n_cells"] and data.schema.n_genes == SIZES["n_genes"]
    assert data.schema.domains == ("background", "group_1", "group_2")
    np.testing.assert_array_equal(data.domain.numpy(), adata.obs["group"].cat.codes)
    np.testing.assert_array_equal(data.dense_counts(), adata.X.toarray())
