"""The factorized (FCR-style) simulator: reproducibility, documented outputs, causal structure
and a real treatment x covariate interaction."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pyro
import pytest
import scipy.sparse as sp
import torch
from pyro import poutine

from pyro_causalcell import CellData
from pyro_causalcell.simulate.factorized import FactorizedWorld, factorized, factorized_program

pytestmark = pytest.mark.usefixtures("seeded")

SIZES = dict(n_cells=150, n_genes=25, n_covariates=2, n_treatments=3, n_latent_x=3,
             n_latent_t=2, n_latent_tx=2)
TREATMENTS = ["control", "treatment_1", "treatment_2", "treatment_3"]


@pytest.fixture(scope="module")
def adata():
    return factorized(**SIZES, seed=4)


def assert_same_adata(a, b) -> None:
    assert (a.X != b.X).nnz == 0
    np.testing.assert_array_equal(a.X.indices, b.X.indices)
    for key in ("z_x", "z_t", "z_tx"):
        np.testing.assert_array_equal(a.obsm[key], b.obsm[key])
    pd.testing.assert_frame_equal(a.obs, b.obs)
    assert a.uns["simulation"] == b.uns["simulation"]
    for key in ("true_covariate_means", "true_treatment_shifts", "true_interaction_shifts"):
        np.testing.assert_array_equal(a.uns[key], b.uns[key])


# ---------------------------------------------------------------------- reproducibility
def test_same_seed_gives_identical_data_whatever_the_global_rng(adata):
    torch.manual_seed(999)
    np.random.seed(999)
    assert_same_adata(factorized(**SIZES, seed=4), adata)


def test_simulation_leaves_the_global_rngs_alone():
    torch.manual_seed(123)
    np.random.seed(123)
    expected = torch.rand(3), np.random.rand(3)
    torch.manual_seed(123)
    np.random.seed(123)
    factorized(n_cells=20, n_genes=10, seed=0)
    torch.testing.assert_close(torch.rand(3), expected[0], rtol=0, atol=0)
    np.testing.assert_array_equal(np.random.rand(3), expected[1])


def test_seed_changes_cells_and_world_seed_keeps_the_world(adata):
    other = factorized(**SIZES, seed=5)
    assert (other.X != adata.X).nnz > 0
    assert not np.allclose(other.uns["true_treatment_shifts"], adata.uns["true_treatment_shifts"])
    same_world = factorized(**SIZES, seed=5, world_seed=4)
    assert same_world.uns["simulation"]["world_seed"] == 4
    assert not np.allclose(same_world.obsm["z_x"], adata.obsm["z_x"])
    for key in ("true_covariate_means", "true_interaction_shifts", "true_ec50", "true_hill"):
        np.testing.assert_array_equal(same_world.uns[key], adata.uns[key])


# ---------------------------------------------------------------------- documented outputs
def test_documented_keys_shapes_and_dtypes(adata):
    n, g = SIZES["n_cells"], SIZES["n_genes"]
    assert adata.shape == (n, g)
    assert sp.isspmatrix_csr(adata.X) and adata.X.dtype == np.int64
    assert adata.X.data.min() >= 0 and np.asarray(adata.X.sum(1)).min() > 0
    assert list(adata.obs_names[:2]) == ["cell_0", "cell_1"]
    assert list(adata.var_names[:2]) == ["gene_0", "gene_1"]

    assert list(adata.obs.columns) == ["covariate", "treatment", "dose"]
    assert list(adata.obs["covariate"].cat.categories) == ["covariate_0", "covariate_1"]
    assert list(adata.obs["treatment"].cat.categories) == TREATMENTS
    assert set(adata.obs["treatment"]) == set(TREATMENTS)
    control = (adata.obs["treatment"] == "control").to_numpy()
    dose = adata.obs["dose"].to_numpy()
    assert dose.dtype == np.float64
    assert (dose[control] == 0).all()
    assert set(dose[~control]) == {0.1, 0.3, 1.0}  # the default levels, exactly

    for key, size in (("z_x", "n_latent_x"), ("z_t", "n_latent_t"), ("z_tx", "n_latent_tx")):
        assert adata.obsm[key].shape == (n, SIZES[size]) and adata.obsm[key].dtype == np.float32
    t, c = SIZES["n_treatments"], SIZES["n_covariates"]
    assert adata.uns["true_covariate_means"].shape == (c, SIZES["n_latent_x"])
    assert adata.uns["true_treatment_shifts"].shape == (t, SIZES["n_latent_t"])
    assert adata.uns["true_interaction_shifts"].shape == (t, c, SIZES["n_latent_tx"])
    assert adata.uns["true_ec50"].shape == adata.uns["true_hill"].shape == (t,)
    assert (adata.uns["true_ec50"] > 0).all() and (adata.uns["true_hill"] > 0).all()
    assert adata.uns["simulation"] == dict(
        name="factorized", **SIZES, covariate_strength=2.0, treatment_strength=2.0,
        interaction_strength=2.0, dose_levels=[0.1, 0.3, 1.0], control_fraction=0.2,
        library_size=2000.0, seed=4, world_seed=4)


def test_without_doses_there_is_no_dose_column_and_full_effects():
    adata = factorized(n_cells=40, n_genes=12, dose_levels=None, seed=1)
    assert list(adata.obs.columns) == ["covariate", "treatment"]
    assert "true_ec50" not in adata.uns and adata.uns["simulation"]["dose_levels"] == []
    world = FactorizedWorld.draw(12, 2, 2, 2, 2, 2, 2.0, 2.0, 2.0, None, 0.2, 1000.0,
                                 torch.Generator().manual_seed(0))
    trace = run(factorized_program, world, 30, seed=0)
    assert "dose" not in trace.nodes


def test_latent_means_follow_the_ground_truth():
    adata = factorized(n_cells=1500, n_genes=10, n_covariates=2, n_treatments=2,
                       dose_levels=None, seed=2)
    covariate = adata.obs["covariate"].cat.codes.to_numpy()
    treatment = adata.obs["treatment"].cat.codes.to_numpy()  # 0 = control
    z_x, z_t, z_tx = (adata.obsm[k] for k in ("z_x", "z_t", "z_tx"))
    for c in range(2):
        np.testing.assert_allclose(z_x[covariate == c].mean(0),
                                   adata.uns["true_covariate_means"][c], atol=0.25)
    np.testing.assert_allclose(z_t[treatment == 0].mean(0), 0.0, atol=0.25)
    np.testing.assert_allclose(z_tx[treatment == 0].mean(0), 0.0, atol=0.25)
    for t in (1, 2):
        np.testing.assert_allclose(z_t[treatment == t].mean(0),
                                   adata.uns["true_treatment_shifts"][t - 1], atol=0.25)
        for c in range(2):
            np.testing.assert_allclose(z_tx[(treatment == t) & (covariate == c)].mean(0),
                                       adata.uns["true_interaction_shifts"][t - 1, c], atol=0.35)
    assert 0.8 < np.concatenate([z_x, z_t, z_tx], 1).std(0).min()


def test_writes_to_h5ad(adata, tmp_path):
    adata.write_h5ad(tmp_path / "factorized.h5ad")


# ---------------------------------------------------------------------- causal structure
def make_world(interaction_strength: float = 2.0, dose_levels=(0.1, 0.3, 1.0)
               ) -> FactorizedWorld:
    return FactorizedWorld.draw(
        n_genes=20, n_covariates=2, n_treatments=2, n_latent_x=2, n_latent_t=2, n_latent_tx=2,
        covariate_strength=2.0, treatment_strength=2.0, interaction_strength=interaction_strength,
        dose_levels=dose_levels, control_fraction=0.3, library_size=1000.0,
        generator=torch.Generator().manual_seed(0))


@pytest.fixture(scope="module")
def world() -> FactorizedWorld:
    return make_world()


def run(program, world, n_cells: int, seed: int):
    torch.manual_seed(seed)
    return poutine.trace(program).get_trace(world, n_cells)


def value(trace, name):
    return trace.nodes[name]["value"]


def assert_unchanged(factual, intervened, names) -> None:
    for name in names:
        assert torch.equal(value(intervened, name), value(factual, name)), name


def test_program_sites_and_shapes(world):
    trace = run(factorized_program, world, 40, seed=0)
    sites = [n for n, s in trace.nodes.items() if s["type"] == "sample"]
    assert sites == ["cells", "domain", "perturbation", "dose", "z_x", "z_t", "z_tx", "library",
                     "expression", "counts"]
    assert value(trace, "z_x").shape == (40, 2) and value(trace, "counts").shape == (40, 20)
    torch.testing.assert_close(value(trace, "expression").sum(-1), value(trace, "library"))
    assert torch.isfinite(trace.log_prob_sum())


def test_do_domain_changes_exactly_the_descendants_of_the_covariate(world):
    n = 80
    factual = run(factorized_program, world, n, seed=3)
    target = torch.ones(n, dtype=torch.long)
    intervened = run(pyro.do(factorized_program, data={"domain": target}), world, n, seed=3)
    assert_unchanged(factual, intervened, ["domain", "perturbation", "dose", "z_t", "library"])

    before = value(factual, "domain")
    moved = before != target
    treated = value(factual, "perturbation") > 0
    assert 0 < moved.sum() < n
    # z_x: the same noise around the new covariate's mean
    shift = world.covariate_means[target] - world.covariate_means[before]
    torch.testing.assert_close(value(intervened, "z_x"), value(factual, "z_x") + shift)
    # z_tx moves for treated cells that changed covariate, and only for them
    changed_tx = (value(intervened, "z_tx") != value(factual, "z_tx")).any(-1)
    assert torch.equal(changed_tx, moved & treated)
    changed_expression = (value(intervened, "expression") != value(factual, "expression")).any(-1)
    assert torch.equal(changed_expression, moved)
    assert not torch.equal(value(intervened, "counts"), value(factual, "counts"))


def test_do_perturbation_changes_exactly_the_descendants_of_the_treatment(world):
    n = 80
    factual = run(factorized_program, world, n, seed=4)
    target = torch.full((n,), 2, dtype=torch.long)
    intervened = run(pyro.do(factorized_program, data={"perturbation": target}), world, n,
                     seed=4)
    assert_unchanged(factual, intervened, ["domain", "perturbation", "z_x", "library"])

    moved = value(factual, "perturbation") != target
    assert 0 < moved.sum() < n
    dose_before, dose_after = value(factual, "dose"), value(intervened, "dose")
    was_control = value(factual, "perturbation") == 0
    assert (dose_before[was_control] == 0).all() and (dose_after > 0).all()
    # the same noise around the new means, given the (possibly new) dose
    covariate = value(factual, "domain")
    _, t_before, tx_before = world.latent_locs(covariate, value(factual, "perturbation"),
                                               dose_before)
    _, t_after, tx_after = world.latent_locs(covariate, target, dose_after)
    torch.testing.assert_close(value(intervened, "z_t"), value(factual, "z_t") - t_before + t_after)
    torch.testing.assert_close(value(intervened, "z_tx"),
                               value(factual, "z_tx") - tx_before + tx_after)
    changed_expression = (value(intervened, "expression") != value(factual, "expression")).any(-1)
    assert torch.equal(changed_expression, moved)


def test_do_dose_moves_treated_cells_only(world):
    n = 80
    factual = run(factorized_program, world, n, seed=5)
    target = torch.full((n,), 1.0)
    intervened = run(pyro.do(factorized_program, data={"dose": target}), world, n, seed=5)
    assert_unchanged(factual, intervened, ["domain", "perturbation", "dose", "z_x", "library"])

    treated = value(factual, "perturbation") > 0
    moved = treated & (value(factual, "dose") != target)
    assert 0 < moved.sum() < treated.sum() < n
    for name in ("z_t", "z_tx", "expression"):
        changed = (value(intervened, name) != value(factual, name)).any(-1)
        assert torch.equal(changed, moved), name


def treatment_effects(world: FactorizedWorld, covariate: int, n: int = 300) -> dict:
    """Effect of treatment 1 (at dose 1) against control on each latent block and on log
    expression, for the same cells (same exogenous noise) all placed in ``covariate``."""
    def traced(treatment: int):
        data = {"domain": torch.full((n,), covariate), "perturbation": torch.full((n,), treatment),
                "dose": torch.full((n,), 1.0)}
        return run(pyro.do(factorized_program, data=data), world, n, seed=6)

    treated, control = traced(1), traced(0)
    effects = {name: value(treated, name) - value(control, name)
               for name in ("z_x", "z_t", "z_tx")}
    effects["log_expression"] = (value(treated, "expression").log()
                                 - value(control, "expression").log()).mean(0)
    return effects


def test_the_treatment_effect_differs_between_covariates(world):
    in_0, in_1 = treatment_effects(world, 0), treatment_effects(world, 1)
    response = world.dose_response(torch.tensor([1]), torch.tensor([1.0]))
    # latents: z_x untouched, z_t moved alike in both covariates, z_tx moved by each covariate's
    # own interaction shift
    assert (in_0["z_x"] == 0).all() and (in_1["z_x"] == 0).all()
    torch.testing.assert_close(in_0["z_t"], in_1["z_t"])
    for covariate, effects in enumerate((in_0, in_1)):
        expected = response * world.interaction_shifts[1, covariate]
        torch.testing.assert_close(effects["z_tx"], expected.expand_as(effects["z_tx"]))
    assert (in_0["z_tx"] - in_1["z_tx"]).abs().max() > 0.5
    # expression: the treatment acts in both covariates, differently
    assert in_0["log_expression"].abs().mean() > 0.3 and in_1["log_expression"].abs().mean() > 0.3
    assert (in_0["log_expression"] - in_1["log_expression"]).abs().mean() > 0.3


def test_without_interaction_the_latent_treatment_effect_ignores_the_covariate():
    world = make_world(interaction_strength=0.0)
    in_0, in_1 = treatment_effects(world, 0), treatment_effects(world, 1)
    assert (in_0["z_tx"] == 0).all() and (in_1["z_tx"] == 0).all()
    torch.testing.assert_close(in_0["z_t"], in_1["z_t"])
    assert in_0["z_t"].abs().max() > 0.5


def test_the_anndata_is_the_documented_trace_of_the_program():
    adata = factorized(**SIZES, seed=5, world_seed=4)
    world = FactorizedWorld.draw(
        n_genes=SIZES["n_genes"], n_covariates=2, n_treatments=3, n_latent_x=3, n_latent_t=2,
        n_latent_tx=2, covariate_strength=2.0, treatment_strength=2.0, interaction_strength=2.0,
        dose_levels=(0.1, 0.3, 1.0), control_fraction=0.2, library_size=2000.0,
        generator=torch.Generator().manual_seed(4))
    trace = run(factorized_program, world, SIZES["n_cells"], seed=5)
    np.testing.assert_array_equal(adata.X.toarray(), value(trace, "counts").numpy())
    for name in ("z_x", "z_t", "z_tx"):
        np.testing.assert_array_equal(adata.obsm[name], value(trace, name).numpy())
    np.testing.assert_array_equal(adata.obs["covariate"].cat.codes, value(trace, "domain"))
    np.testing.assert_array_equal(adata.obs["treatment"].cat.codes, value(trace, "perturbation"))
    np.testing.assert_allclose(adata.obs["dose"], value(trace, "dose").numpy(), rtol=1e-6)


# ---------------------------------------------------------------------- data layer
def test_simulated_data_encodes_as_cell_data(adata):
    data = CellData.from_anndata(adata, perturbation_key="treatment", control="control",
                                 domain_key="covariate", dose_key="dose")
    assert data.n_cells == SIZES["n_cells"] and data.schema.n_genes == SIZES["n_genes"]
    assert data.schema.perturbations == tuple(TREATMENTS[1:])
    assert data.schema.domains == ("covariate_0", "covariate_1")
    codes = adata.obs["treatment"].cat.codes.to_numpy()  # 0 = control
    expected = np.zeros((SIZES["n_cells"], SIZES["n_treatments"]), dtype=np.float32)
    expected[codes > 0, codes[codes > 0] - 1] = 1.0
    np.testing.assert_array_equal(data.perturbation.numpy(), expected)
    np.testing.assert_array_equal(data.domain.numpy(), adata.obs["covariate"].cat.codes)
    np.testing.assert_allclose(data.dose.numpy(), adata.obs["dose"], rtol=1e-6)
    np.testing.assert_array_equal(data.dense_counts(), adata.X.toarray())
