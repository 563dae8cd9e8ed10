"""The sparse-shift schedule's epochs and batch size, and the benchmark's "auto" settings."""

import pytest

import pyro_causalcell.benchmarks.sparse_shift as bench

from pyro_causalcell.benchmarks.sparse_shift import SparseShiftBenchmark
from pyro_causalcell.infer.schedule import auto_batch_size, auto_max_epochs


@pytest.mark.parametrize("n_cells, epochs, batch", [
    (20_000, 300, 256),   # the study's design: 80 x 250 training cells, 78 steps per epoch
    (30_000, 300, 256),   # more steps per epoch than the study's: still at least 300 epochs
    (12_800, 469, 256),   # 160 x 80 cells: ceil(23,437.5 * 256 / 12,800)
    (16_000, 375, 256),
    (4_000, 750, 128),    # 40 x 100 cells: 31 minibatches of 128, 15 of 256
    (6_399, 469, 128),    # 24.996 minibatches of 256: too few
    (6_400, 938, 256),    # exactly 25
    (1_000, 1_500, 64),   # fewer than 25 minibatches of every size: the smallest
])
def test_auto_rules_follow_the_number_of_cells(n_cells, epochs, batch):
    assert auto_batch_size(n_cells) == batch
    assert auto_max_epochs(n_cells, batch) == epochs


@pytest.mark.parametrize("n_cells, batch", [(20_000, 256), (4_000, 128), (12_800, 256),
                                            (1_000, 64), (777, 64)])
def test_auto_epochs_make_at_least_the_study_schedules_steps(n_cells, batch):
    epochs = auto_max_epochs(n_cells, batch)
    steps = epochs * n_cells / batch
    assert steps >= 300 * 20_000 / 256 - 1e-9
    assert epochs == 300 or (epochs - 1) * n_cells / batch < 300 * 20_000 / 256


def test_schedule_resolves_auto_and_keeps_given_values():
    assert SparseShiftBenchmark().training_schedule(4_000) == (750, 128)
    assert SparseShiftBenchmark(max_epochs=40).training_schedule(4_000) == (40, 128)
    # given batch, "auto" epochs: the steps of the study's schedule at that batch
    assert SparseShiftBenchmark(batch_size=512).training_schedule(4_000) == (3_000, 512)
    assert SparseShiftBenchmark(max_epochs=7, batch_size=32).training_schedule(20_000) == (7, 32)


def test_step_share_scales_the_automatic_epochs_only():
    assert SparseShiftBenchmark(step_share=0.5).training_schedule(20_000) == (150, 256)
    assert SparseShiftBenchmark(step_share=0.5).training_schedule(4_000) == (375, 128)
    assert SparseShiftBenchmark(step_share=0.5, max_epochs=40).training_schedule(4_000) == (
        40, 128)


@pytest.mark.parametrize("share", [0, -0.5, "half", float("nan"), True])
def test_a_bad_step_share_is_named_when_the_benchmark_is_made(share):
    with pytest.raises(ValueError, match=r"step_share=.*; give a positive number"):
        SparseShiftBenchmark(step_share=share)


@pytest.mark.parametrize("setting", [dict(max_epochs="many"), dict(batch_size=0),
                                     dict(max_epochs=2.5)])
def test_bad_schedule_is_named_when_the_benchmark_is_made(setting):
    (name, value), = setting.items()
    with pytest.raises(ValueError, match=f"{name}={value!r}; give a positive integer or \"auto\""):
        SparseShiftBenchmark(**setting)  # before simulating or fitting anything


@pytest.mark.parametrize("restarts", [0, True, 2.0])
def test_bad_restarts_are_named_when_the_benchmark_is_made(restarts):
    with pytest.raises(ValueError, match=f"restarts must be a positive integer, got {restarts!r}"):
        SparseShiftBenchmark(restarts=restarts)


@pytest.mark.parametrize("options", [dict(sparsity="vae"), dict(n_latent=3, beta=2.0)])
def test_model_options_may_not_replace_the_benchmarks_own_settings(options):
    with pytest.raises(ValueError, match=r"model_options may not set \[.*\]: choose the model "
                                         r"with models="):
        SparseShiftBenchmark(model_options=options)


def test_an_unknown_model_option_is_named_before_any_fit():
    with pytest.raises(ValueError, match=r"model_options \['dropuot'\] are not SparseShiftVAE "
                                         r"arguments; choose among \[.*'dropout'"):
        SparseShiftBenchmark(model_options={"dropuot": 0})


def test_model_options_reach_every_model_and_its_row():
    benchmark = SparseShiftBenchmark(
        models=["VAE", "sVAE+"], n_latent=3, n_perturbations=6, n_cells_per_perturbation=30,
        n_genes=40, n_held_out=2, max_epochs=2, transfer_epochs=1, n_importance_samples=2,
        device="cpu", model_options={"dropout": 0.0, "sparsity_weight": 7})
    table = benchmark.run(log=lambda line: None)
    assert table["options"].tolist() == ["dropout=0.0 sparsity_weight=7"] * 2
    for name in ("VAE", "sVAE+"):
        model = benchmark.fitted[name]["model"]
        assert model.init_args["dropout"] == 0.0 and model.sparsity_weight == 7
    assert table.loc["sVAE+", "sparsity_weight"] == 7  # not the "auto" rule's


def test_realign_fits_svae_plus_in_two_parts_with_the_same_epochs(monkeypatch):
    calls = []
    original = bench.fit_with_realignment

    def recorded(model, data, **kwargs):
        calls.append((kwargs["max_epochs"], kwargs["realign_after"]))
        return original(model, data, **kwargs)

    monkeypatch.setattr(bench, "fit_with_realignment", recorded)
    benchmark = SparseShiftBenchmark(
        models=["VAE", "sVAE+"], n_latent=3, n_perturbations=6, n_cells_per_perturbation=30,
        n_genes=40, n_held_out=2, max_epochs=6, transfer_epochs=1, n_importance_samples=2,
        device="cpu", realign=True)
    table = benchmark.run(log=lambda line: None)
    assert calls == [(6, 4)]  # sVAE+ only, realigned after 2/3 of the epochs
    assert table["realign"].to_dict() == {"VAE": False, "sVAE+": True}


@pytest.mark.parametrize("free_bits", [-0.5, float("nan"), "0.5", True])
def test_bad_free_bits_are_named_when_the_benchmark_is_made(free_bits):
    with pytest.raises(ValueError, match=r"free_bits=.*; give a number of nats >= 0"):
        SparseShiftBenchmark(free_bits=free_bits)
