"""The sparse-shift (sVAE study) simulator: reproducibility, documented outputs, the study's
ground truth, its causal structure under ``pyro.do``, and the held-out split."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pyro
import pytest
import scipy.sparse as sp
import torch
from pyro import poutine

from pyro_causalcell import CellData
from pyro_causalcell.simulate._common import trace_with_seed
from pyro_causalcell.simulate.sparse_shift import (ConditionLaw, SparseShiftWorld,
                                                   perturbation_matrix, sparse_shift,
                                                   sparse_shift_program, split_perturbations)

pytestmark = pytest.mark.usefixtures("seeded")

SIZES = dict(n_latent=4, n_perturbations=6, n_cells_per_perturbation=40, n_genes=20, n_hidden=8)
NAMES = [f"p{p}" for p in range(6)]


@pytest.fixture(scope="module")
def adata():
    return sparse_shift(**SIZES, seed=3)


@pytest.fixture(scope="module")
def designed():
    """Controls and combinations, with the world and the observed perturbation matrix."""
    return sparse_shift(**SIZES, n_control_cells=300, n_combinations=3,
                        n_cells_per_combination=30, seed=5, return_world=True)


def assert_same_adata(a, b) -> None:
    assert (a.X != b.X).nnz == 0
    np.testing.assert_array_equal(a.X.indices, b.X.indices)
    np.testing.assert_array_equal(a.obsm["z_true"], b.obsm["z_true"])
    pd.testing.assert_frame_equal(a.obs, b.obs)
    for key in ("true_targets", "true_shifts"):
        np.testing.assert_array_equal(a.uns[key], b.uns[key])
    assert a.uns["perturbation_names"] == b.uns["perturbation_names"]
    assert a.uns["simulation"] == b.uns["simulation"]


def rates_of(adata, world: SparseShiftWorld) -> torch.Tensor:
    return world.rates(torch.as_tensor(adata.obsm["z_true"]))


# ---------------------------------------------------------------------- reproducibility
def test_same_seed_gives_identical_data_whatever_the_global_rng(adata):
    torch.manual_seed(999)
    np.random.seed(999)
    assert_same_adata(sparse_shift(**SIZES, seed=3), adata)


def test_simulation_leaves_the_global_rngs_alone():
    torch.manual_seed(123)
    np.random.seed(123)
    expected = torch.rand(3), np.random.rand(3)
    torch.manual_seed(123)
    np.random.seed(123)
    sparse_shift(**SIZES, seed=0)
    torch.testing.assert_close(torch.rand(3), expected[0], rtol=0, atol=0)
    np.testing.assert_array_equal(np.random.rand(3), expected[1])


def test_seed_changes_everything_and_world_seed_keeps_the_world(adata):
    other = sparse_shift(**SIZES, seed=4)
    assert (other.X != adata.X).nnz > 0
    assert not np.array_equal(other.uns["true_shifts"], adata.uns["true_shifts"])
    same_world = sparse_shift(**SIZES, seed=4, world_seed=3)
    assert same_world.uns["simulation"]["world_seed"] == 3
    np.testing.assert_array_equal(same_world.uns["true_shifts"], adata.uns["true_shifts"])
    assert not np.allclose(same_world.obsm["z_true"], adata.obsm["z_true"])


def test_the_program_replays_the_data_exactly(designed):
    adata, world, matrix = designed
    trace = trace_with_seed(sparse_shift_program, 5, world, matrix)
    np.testing.assert_array_equal(trace.nodes["counts"]["value"].numpy(), adata.X.toarray())
    np.testing.assert_array_equal(trace.nodes["z"]["value"].numpy(), adata.obsm["z_true"])
    torch.testing.assert_close(
        matrix, perturbation_matrix(adata.obs["perturbation"], adata.uns["perturbation_names"]))


# ---------------------------------------------------------------------- documented outputs
def test_documented_keys_shapes_and_dtypes(adata):
    n, g, k, p = 6 * 40, SIZES["n_genes"], SIZES["n_latent"], SIZES["n_perturbations"]
    assert adata.shape == (n, g)
    assert sp.isspmatrix_csr(adata.X) and adata.X.dtype == np.int64
    assert adata.X.data.min() >= 0 and np.asarray(adata.X.sum(1)).min() > 0
    assert list(adata.obs_names[:2]) == ["cell_0", "cell_1"]
    assert list(adata.var_names[:2]) == ["gene_0", "gene_1"]

    assert list(adata.obs.columns) == ["perturbation"]
    assert list(adata.obs["perturbation"].cat.categories) == NAMES
    assert (adata.obs["perturbation"].value_counts() == 40).all()
    assert adata.obs["perturbation"].iloc[:40].nunique() > 1  # cells are shuffled

    z = adata.obsm["z_true"]
    assert z.shape == (n, k) and z.dtype == np.float32 and np.isfinite(z).all()
    assert adata.uns["perturbation_names"] == NAMES
    targets, shifts = adata.uns["true_targets"], adata.uns["true_shifts"]
    assert targets.shape == shifts.shape == (p, k)
    assert targets.dtype == bool and np.issubdtype(shifts.dtype, np.floating)
    assert adata.uns["simulation"] == dict(
        name="sparse_shift", **{key: v for key, v in SIZES.items() if key != "n_hidden"},
        n_control_cells=0, n_combinations=0, n_cells_per_combination=40, softmax="cells",
        count_scale=1e6, inverse_dispersion=None, n_hidden=8, negative_slope=0.2,
        shift_mean=5.0, shift_std=0.5, max_targets=3, seed=3, world_seed=3)


def test_default_size_is_the_study_design():
    adata = sparse_shift()
    assert adata.shape == (25_000, 100)
    assert adata.obsm["z_true"].shape == (25_000, 15)
    assert adata.uns["true_targets"].shape == (100, 15)
    assert adata.obs["perturbation"].nunique() == 100
    # rates sum to 1 per gene over cells, so the total count is about 1e6 per gene
    assert abs(np.asarray(adata.X.sum(1)).mean() - 4000) < 10


def test_controls_and_combinations_are_labelled(designed):
    adata = designed[0]
    categories = list(adata.obs["perturbation"].cat.categories)
    assert categories[:7] == ["control"] + NAMES
    combos = categories[7:]
    assert len(combos) == len(set(combos)) == 3
    for combo in combos:
        first, second = combo.split("+")
        assert first in NAMES and second in NAMES and int(first[1:]) < int(second[1:])
    counts = adata.obs["perturbation"].value_counts()
    assert counts["control"] == 300 and (counts[combos] == 30).all()
    assert (counts[NAMES] == 40).all()


# ---------------------------------------------------------------------- the study's ground truth
def test_one_to_three_targets_and_shifts_near_five():
    adata = sparse_shift(n_latent=10, n_perturbations=300, n_cells_per_perturbation=1,
                         n_genes=40, seed=1)
    targets, shifts = adata.uns["true_targets"], adata.uns["true_shifts"]
    per_perturbation = targets.sum(1)
    assert per_perturbation.min() == 1 and per_perturbation.max() == 3
    # three draws with replacement from 10 indices: exactly 3 distinct targets is rarer
    # than drawing 3 (1/3 x 0.72)
    assert 0.15 < (per_perturbation == 3).mean() < 0.32
    assert (shifts[~targets] == 0).all() and (shifts[targets] != 0).all()
    magnitude = np.abs(shifts[targets])
    assert 3.0 < magnitude.min() and magnitude.max() < 7.0
    assert abs(magnitude.mean() - 5.0) < 0.1 and abs(magnitude.std() - 0.5) < 0.1
    assert 0.4 < (shifts[targets] > 0).mean() < 0.6


def test_latents_are_normal_around_their_perturbations_shift(designed):
    adata, world, matrix = designed
    z = adata.obsm["z_true"]
    shifts = adata.uns["true_shifts"]
    values = adata.obs["perturbation"].to_numpy()
    control = values == "control"
    assert np.abs(z[control].mean(0)).max() < 0.25  # 300 cells: standard error 0.06
    np.testing.assert_allclose(z[control].std(0), 1.0, atol=0.15)
    for p, name in enumerate(NAMES):
        cells = values == name
        assert np.abs(z[cells].mean(0) - shifts[p]).max() < 0.6  # 40 cells: s.e. 0.16
    residual = z - matrix.numpy() @ shifts
    np.testing.assert_allclose(residual.std(0), 1.0, atol=0.1)
    for combo in adata.obs["perturbation"].cat.categories[7:]:  # shifts of "A+B" add
        first, second = (NAMES.index(a) for a in combo.split("+"))
        cells = values == combo
        expected = shifts[first] + shifts[second]
        assert np.abs(z[cells].mean(0) - expected).max() < 0.6


def test_mixing_weights_are_scaled_semi_orthogonal_matrices(designed):
    world = designed[1]
    widths = [4, 8, 8, 8, 20]
    for weight, fan_in, fan_out in zip(world.weights, widths[:-1], widths[1:]):
        assert weight.shape == (fan_in, fan_out)
        gain = math.sqrt(2 / (1 + 0.2 ** 2)) * math.sqrt(2 / (fan_in + fan_out))
        torch.testing.assert_close(weight @ weight.T / gain ** 2, torch.eye(fan_in),
                                   atol=1e-5, rtol=0)


def test_rates_sum_to_one_per_gene_over_cells_by_default(designed):
    adata, world, _ = designed
    rates = rates_of(adata, world)
    torch.testing.assert_close(rates.sum(0), torch.ones(20), atol=1e-5, rtol=0)
    assert not torch.allclose(rates.sum(1), rates.sum(1)[0].expand(len(rates)))
    total = adata.X.sum(0).A1 / 1e6
    np.testing.assert_allclose(total, 1.0, atol=5e-3)  # Poisson(1e6) per gene, s.d. 1e-3


def test_per_cell_softmax_over_genes():
    adata, world, _ = sparse_shift(**SIZES, softmax="genes", count_scale=2000.0, seed=2,
                                   return_world=True)
    rates = rates_of(adata, world)
    torch.testing.assert_close(rates.sum(1), torch.ones(len(rates)), atol=1e-5, rtol=0)
    library = np.asarray(adata.X.sum(1)).ravel()
    assert abs(library.mean() - 2000) < 20 and library.std() < 3 * math.sqrt(2000)


def test_logits_are_divided_by_their_global_standard_deviation(designed):
    adata, world, _ = designed
    z = torch.as_tensor(adata.obsm["z_true"])
    logits = world.logits(z)
    scaled = world.log_rates(z) + torch.logsumexp(logits / logits.std(correction=0), 0)
    torch.testing.assert_close(scaled.std(correction=0), torch.tensor(1.0))
    torch.testing.assert_close(scaled, logits / logits.std(correction=0), atol=1e-4, rtol=0)


def test_negative_binomial_noise_is_overdispersed():
    def dispersion_index(inverse_dispersion):
        adata, world, _ = sparse_shift(**SIZES, inverse_dispersion=inverse_dispersion, seed=6,
                                       return_world=True)
        mean = 1e6 * rates_of(adata, world).numpy()
        return float((((adata.X.toarray() - mean) ** 2) / mean).mean()), mean.mean()

    poisson, _ = dispersion_index(None)
    negative_binomial, mean = dispersion_index(5.0)
    assert 0.9 < poisson < 1.1
    assert negative_binomial > 0.5 * (1 + mean / 5.0)  # Var = mu + mu^2 / theta


# ---------------------------------------------------------------------- causal structure
def run(program, world, matrix, seed):
    torch.manual_seed(seed)
    return poutine.trace(program).get_trace(world, matrix)


def test_program_sites_and_shapes(designed):
    _, world, matrix = designed
    trace = run(sparse_shift_program, world, matrix[:50], seed=0)
    sites = [n for n, s in trace.nodes.items() if s["type"] == "sample"]
    assert sites == ["cells", "perturbation", "z", "rates", "expression", "counts"]
    assert trace.nodes["perturbation"]["is_observed"]
    assert trace.nodes["z"]["value"].shape == (50, 4)
    assert trace.nodes["counts"]["value"].shape == (50, 20)
    torch.testing.assert_close(trace.nodes["expression"]["value"],
                               1e6 * trace.nodes["rates"]["value"])
    trace.compute_log_prob()
    assert torch.isfinite(trace.nodes["perturbation"]["log_prob"]).all()


def test_sampled_perturbations_follow_the_design(designed):
    _, world, _ = designed
    torch.manual_seed(0)
    trace = poutine.trace(sparse_shift_program).get_trace(world, n_cells=3000)
    sampled = trace.nodes["perturbation"]["value"]
    assert sampled.shape == (3000, 6) and not trace.nodes["perturbation"]["is_observed"]
    size = sampled.sum(1)
    # design: 300 controls, 6 x 40 singles, 3 x 30 pairs
    assert abs((size == 0).float().mean() - 300 / 630) < 0.04
    assert abs((size == 2).float().mean() - 90 / 630) < 0.03
    rows = {tuple(r) for r in world.conditions.tolist()}
    assert {tuple(r) for r in sampled.tolist()} <= rows


def test_condition_law_log_prob():
    conditions = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0]])
    law = ConditionLaw(conditions, torch.tensor([2.0, 1.0, 1.0]))
    value = torch.tensor([[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [1.0, 1.0, 0.0], [0.0, 1.0, 0.0]])
    expected = torch.tensor([math.log(0.5), math.log(0.25), math.log(0.25), -math.inf])
    torch.testing.assert_close(law.log_prob(value), expected)


def test_do_z_changes_exactly_the_descendants_of_z(designed):
    _, world, matrix = designed
    matrix = matrix[:80]
    factual = run(sparse_shift_program, world, matrix, seed=3)
    new_z = factual.nodes["z"]["value"].clone()
    new_z[:10] += 2.0
    intervened = run(pyro.do(sparse_shift_program, data={"z": new_z}), world, matrix, seed=3)

    # "z" in the trace is do's fresh copy of the site: the same draw as the factual one
    for name in ("perturbation", "z"):
        assert torch.equal(intervened.nodes[name]["value"], factual.nodes[name]["value"]), name
    # the descendants are the structural equations at the new z (for every cell: coupled)
    torch.testing.assert_close(intervened.nodes["rates"]["value"], world.rates(new_z))
    assert not torch.allclose(intervened.nodes["rates"]["value"], factual.nodes["rates"]["value"])
    assert not torch.equal(intervened.nodes["counts"]["value"], factual.nodes["counts"]["value"])


def test_do_perturbation_shifts_z_with_the_same_noise(designed):
    _, world, matrix = designed
    matrix = matrix[:80]
    factual = run(sparse_shift_program, world, matrix, seed=4)
    target = torch.zeros_like(matrix)
    target[:, 2] = 1.0  # every cell gets p2
    intervened = run(pyro.do(sparse_shift_program, data={"perturbation": target}), world,
                     matrix, seed=4)
    assert torch.equal(intervened.nodes["perturbation"]["value"], matrix)
    shift = (target - matrix) @ world.shifts
    torch.testing.assert_close(intervened.nodes["z"]["value"],
                               factual.nodes["z"]["value"] + shift)
    torch.testing.assert_close(intervened.nodes["rates"]["value"],
                               world.rates(intervened.nodes["z"]["value"]))


def test_frozen_normalisers_make_cells_independent(designed):
    adata, world, matrix = designed
    z = torch.as_tensor(adata.obsm["z_true"])
    frozen = world.frozen(z)
    torch.testing.assert_close(frozen.rates(z), world.rates(z))
    new_z = z.clone()
    new_z[0] += 3.0
    changed = frozen.rates(new_z)
    torch.testing.assert_close(changed[1:], world.rates(z)[1:], rtol=0, atol=0)
    assert not torch.allclose(changed[0], world.rates(z)[0])
    assert not torch.allclose(world.rates(new_z)[1:], world.rates(z)[1:], rtol=0, atol=0)


# ---------------------------------------------------------------------- errors
def test_bad_arguments_are_refused():
    with pytest.raises(ValueError, match="softmax"):
        sparse_shift(**SIZES, softmax="rows")
    with pytest.raises(ValueError, match="n_combinations"):
        sparse_shift(**SIZES, n_combinations=16)
    with pytest.raises(ValueError, match="inverse_dispersion"):
        sparse_shift(**SIZES, inverse_dispersion=0.0)
    with pytest.warns(UserWarning, match="injective"):
        sparse_shift(n_latent=4, n_perturbations=2, n_cells_per_perturbation=5, n_genes=10)
    with pytest.raises(ValueError, match="unknown perturbation"):
        perturbation_matrix(["p0", "q1"], NAMES)


# ---------------------------------------------------------------------- held-out split
def test_split_holds_out_whole_perturbations(designed):
    adata = designed[0]
    before = adata.copy()
    train, held_out = split_perturbations(adata, n_held_out=2, seed=1)
    assert_same_adata(adata, before)  # the input is untouched
    assert "held_out_perturbations" not in adata.uns

    names = held_out.uns["held_out_perturbations"]
    assert len(names) == 2 and set(names) <= set(NAMES)
    assert train.uns["held_out_perturbations"] == names
    assert set(train.obs_names).isdisjoint(held_out.obs_names)
    assert train.n_obs + held_out.n_obs == adata.n_obs

    atoms = lambda a: {x for v in a.obs["perturbation"].astype(str) for x in v.split("+")}  # noqa
    assert atoms(held_out) - {"control"} >= set(names) and "control" not in atoms(held_out)
    assert atoms(train).isdisjoint(names) and "control" in atoms(train)
    for value in held_out.obs["perturbation"].astype(str).unique():  # combos with a held-out one
        assert set(value.split("+")) & set(names)
    np.testing.assert_array_equal(train.uns["true_targets"], adata.uns["true_targets"])
    train.obsm["z_true"][:] = 0.0  # copies, not views
    assert np.abs(adata.obsm["z_true"]).sum() > 0


def test_split_is_reproducible_and_accepts_names(adata):
    first = split_perturbations(adata, n_held_out=2, seed=7)[1].uns["held_out_perturbations"]
    again = split_perturbations(adata, n_held_out=2, seed=7)[1].uns["held_out_perturbations"]
    assert first == again
    train, held_out = split_perturbations(adata, held_out=["p5", "p0"])
    assert held_out.uns["held_out_perturbations"] == ["p0", "p5"]
    assert set(held_out.obs["perturbation"]) == {"p0", "p5"} and held_out.n_obs == 80
    with pytest.raises(ValueError, match="unknown"):
        split_perturbations(adata, held_out=["p9"])
    with pytest.raises(ValueError, match="n_held_out"):
        split_perturbations(adata, n_held_out=7)


def test_study_split_trains_on_80_and_holds_out_20():
    adata = sparse_shift(n_cells_per_perturbation=2, seed=0)
    train, held_out = split_perturbations(adata)
    assert train.obs["perturbation"].nunique() == 80
    assert held_out.obs["perturbation"].nunique() == 20
    assert held_out.n_obs == 40
    # splitting the training data again only chooses among the perturbations it has
    train_again, held_again = split_perturbations(train, n_held_out=80)
    assert train_again.n_obs == 0 and held_again.n_obs == train.n_obs


# ---------------------------------------------------------------------- data layer
def test_simulated_data_encodes_as_cell_data(designed):
    adata, _, matrix = designed
    data = CellData.from_anndata(adata, perturbation_key="perturbation", control="control")
    assert data.n_cells == adata.n_obs and data.schema.n_genes == 20
    assert set(data.schema.perturbations) == set(NAMES)
    # the schema sorts names as strings; reorder the truth's columns to compare
    order = [NAMES.index(name) for name in data.schema.perturbations]
    np.testing.assert_array_equal(data.perturbation.numpy(), matrix[:, order].numpy())
    np.testing.assert_array_equal(data.dense_counts(), adata.X.toarray())
    assert type(data.counts).__name__ == "SparseCounts"


def test_round_trips_through_h5ad(adata, tmp_path):
    import anndata as ad

    adata.write_h5ad(tmp_path / "sparse_shift.h5ad")
    back = ad.read_h5ad(tmp_path / "sparse_shift.h5ad")
    np.testing.assert_array_equal(back.uns["true_targets"], adata.uns["true_targets"])
    np.testing.assert_array_equal(back.X.toarray(), adata.X.toarray())
    assert list(back.uns["perturbation_names"]) == NAMES
