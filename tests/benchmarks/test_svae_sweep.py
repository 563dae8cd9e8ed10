"""The design sweep script (benchmarks/svae_sweep.py): runs, resumes, summarises."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pandas as pd
import pytest

SCRIPT = Path(__file__).resolve().parents[2] / "benchmarks" / "svae_sweep.py"


@pytest.fixture(scope="module")
def sweep():
    spec = importlib.util.spec_from_file_location("svae_sweep", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_sweep_writes_one_row_per_fit_and_resumes(sweep, tmp_path, monkeypatch):
    table = tmp_path / "table.rst"
    args = ["--out", str(tmp_path), "--quick", "--designs", "controls_pairs", "--seeds", "1,2",
            "--models", "VAE,sVAE+", "--threads", "1", "--table", str(table)]
    assert sweep.main(args) == 0
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert sorted(zip(runs["seed"], runs["model"])) == [(1, "VAE"), (1, "sVAE+"),
                                                        (2, "VAE"), (2, "sVAE+")]
    assert runs["mcc_pearson"].between(0, 1).all() and runs["fit_seconds"].gt(0).all()
    # the quick settings' epochs, and the "auto" batch size recorded with each fit
    assert runs["max_epochs"].eq(4).all() and runs["batch_size"].isin([64, 128, 256]).all()
    text = table.read_text()
    assert text.startswith(".. list-table::") and text.count("   * - controls_pairs") == 2

    # a second call finds every fit in runs.csv and fits nothing
    def refuse(self, log=print):
        raise AssertionError("refitted a finished run")

    monkeypatch.setattr(sweep.SparseShiftBenchmark, "run", refuse)
    assert sweep.main(args) == 0
    assert len(pd.read_csv(tmp_path / "runs.csv")) == 4
    # --report-only summarises what is there, even for seeds not run yet
    table.unlink()
    assert sweep.main(args[:-2] + ["--seeds", "1,2,3", "--report-only",
                                   "--table", str(table)]) == 0
    assert table.read_text().count("   * - controls_pairs") == 2
    with pytest.raises(SystemExit, match="--report-only: .* does not exist; run the sweep"):
        sweep.main(["--out", str(tmp_path / "empty"), "--report-only"])


def test_restarted_fits_are_rows_of_their_own(sweep, tmp_path):
    args = ["--out", str(tmp_path), "--quick", "--designs", "small", "--seeds", "1",
            "--models", "sVAE+", "--threads", "1"]
    assert sweep.main(args) == 0
    assert sweep.main(args + ["--restarts", "2"]) == 0
    runs = sweep.read_runs(tmp_path / "runs.csv").set_index("restarts")
    assert float(runs.loc[1, "restart_mccs"]) == pytest.approx(runs.loc[1, "mcc_pearson"],
                                                                abs=1e-3)  # one fit
    scores = [float(x) for x in runs.loc[2, "restart_validation_elbos"].split(";")]
    mccs = [float(x) for x in runs.loc[2, "restart_mccs"].split(";")]
    kept = int(runs.loc[2, "kept_restart"])
    assert len(scores) == len(mccs) == 2 and kept == scores.index(max(scores))
    assert runs.loc[2, "mcc_pearson"] == pytest.approx(mccs[kept], abs=1e-3)
    # restart 0 is the single fit: same seeds, same validation ELBO
    assert scores[0] == pytest.approx(runs.loc[1, "validation_elbo"], abs=2e-3)


def test_summary_reports_mean_and_range_over_seeds(sweep):
    runs = pd.DataFrame({"design": ["small"] * 5, "model": ["sVAE+"] * 5,
                         "seed": [3, 1, 2, 1, 2], "restarts": [1, 1, 1, 3, 3],
                         **{column: [0.8, 0.9, 1.0, 0.5, 0.6] for column, _ in sweep.METRICS}})
    summary = sweep.summarise(runs)
    row = summary.loc[("small", "sVAE+")]
    assert row[("mcc_pearson", "mean")] == pytest.approx(0.9)
    assert (row[("mcc_pearson", "min")], row[("mcc_pearson", "max")]) == (0.8, 1.0)
    assert row[("seeds", "list")] == "1,2,3"
    restarted = summary.loc[("small", "sVAE+, best of 3")]  # fits with restarts apart
    assert row[("seeds", "list")] == "1,2,3" and restarted[("seeds", "list")] == "1,2"
    assert restarted[("mcc_pearson", "mean")] == pytest.approx(0.55)
    table = sweep.rst_table(summary)
    assert "     - 0.900 [0.800, 1.000]" in table and "     - sVAE+, best of 3" in table


def test_rows_written_before_restarts_read_as_single_fits(sweep, tmp_path):
    path = tmp_path / "runs.csv"
    pd.DataFrame({"design": ["small"], "seed": [1], "model": ["VAE"],
                  "mcc_pearson": [0.5]}).to_csv(path, index=False)
    assert sweep.read_runs(path)["restarts"].tolist() == [1]


def test_unknown_design_is_named(sweep, tmp_path):
    with pytest.raises(SystemExit, match=r"--designs: unknown \['huge'\]; choose among study"):
        sweep.main(["--out", str(tmp_path), "--designs", "huge"])


def test_the_ceiling_is_one_row_per_design_and_seed(sweep, tmp_path):
    args = ["--out", str(tmp_path), "--quick", "--designs", "small", "--seeds", "1",
            "--models", "ceiling", "--threads", "1"]
    assert sweep.main(args) == 0
    assert sweep.main(args + ["--restarts", "2"]) == 0  # not fitted again for restarts
    runs = sweep.read_runs(tmp_path / "runs.csv")
    assert len(runs) == 1
    row = runs.iloc[0]
    assert (row["model"], row["restarts"]) == ("ceiling", 1)
    assert -1.0 <= row["ceiling_min"] <= row["mcc_pearson"] <= 1.0 and row["fit_seconds"] > 0
    summary = sweep.summarise(runs)
    assert summary.loc[("small", "ceiling"), ("mcc_pearson", "mean")] == row["mcc_pearson"]


def test_fits_with_options_are_rows_of_their_own(sweep, tmp_path):
    args = ["--out", str(tmp_path), "--quick", "--designs", "small", "--seeds", "1",
            "--models", "sVAE+,ceiling", "--threads", "1"]
    assert sweep.main(args) == 0
    assert sweep.main(args + ["--options", "dropout=0, sparsity_weight=7"]) == 0
    runs = sweep.read_runs(tmp_path / "runs.csv")
    assert sorted(zip(runs["model"], runs["options"])) == [
        ("ceiling", ""), ("sVAE+", ""), ("sVAE+", "dropout=0 sparsity_weight=7")]
    assert runs.set_index("options").loc["dropout=0 sparsity_weight=7", "sparsity_weight"] == 7
    summary = sweep.summarise(runs)
    assert ("small", "sVAE+ (dropout=0 sparsity_weight=7)") in summary.index
    assert ("small", "sVAE+") in summary.index  # the default fit is a row apart


@pytest.mark.parametrize("text, parsed", [("", {}), ("dropout=0", {"dropout": 0}),
                                          ("dropout=0.1, norm=layer",
                                           {"dropout": 0.1, "norm": "layer"}),
                                          ("norm=None", {"norm": None})])
def test_options_are_parsed_as_python_values(sweep, text, parsed):
    assert sweep._options(text) == parsed


@pytest.mark.parametrize("text", ["dropout", "=0"])
def test_an_option_without_name_and_value_is_named(sweep, text):
    with pytest.raises(SystemExit, match=f"--options: {text!r} is not name=value"):
        sweep._options(text)


def test_realigned_fits_are_rows_of_their_own(sweep, tmp_path, monkeypatch):
    args = ["--out", str(tmp_path), "--quick", "--designs", "small", "--seeds", "1",
            "--models", "VAE,sVAE+", "--threads", "1"]
    assert sweep.main(args) == 0
    assert sweep.main(args + ["--realign"]) == 0
    runs = sweep.read_runs(tmp_path / "runs.csv")
    # the VAE has no perturbation prior to realign by: its fit is the one already there
    assert sorted(zip(runs["model"], runs["realign"])) == [("VAE", False), ("sVAE+", False),
                                                           ("sVAE+", True)]
    names = sweep.summarise(runs).index.get_level_values("model").tolist()
    assert sorted(names) == ["VAE", "sVAE+", "sVAE+, realigned"]

    def refuse(self, log=print):
        raise AssertionError("refitted a finished run")

    monkeypatch.setattr(sweep.SparseShiftBenchmark, "run", refuse)
    assert sweep.main(args + ["--realign"]) == 0  # resumed: nothing left to fit


def test_rows_written_before_realignment_read_as_not_realigned(sweep, tmp_path):
    path = tmp_path / "runs.csv"
    pd.DataFrame({"design": ["small"], "seed": [1], "model": ["sVAE+"], "restarts": [1],
                  "mcc_pearson": [0.7]}).to_csv(path, index=False)
    runs = sweep.read_runs(path)
    assert runs["realign"].tolist() == [False] and runs["options"].tolist() == [""]
    assert runs["step_share"].tolist() == [1.0] and runs["free_bits"].tolist() == [0.0]


def test_fits_with_a_step_share_or_free_bits_are_rows_of_their_own(sweep, tmp_path,
                                                                   monkeypatch):
    args = ["--out", str(tmp_path), "--quick", "--designs", "small", "--seeds", "1",
            "--models", "sVAE+", "--threads", "1", "--realign"]
    assert sweep.main(args) == 0
    assert sweep.main(args + ["--step-share", "0.5"]) == 0
    assert sweep.main(args + ["--free-bits", "0.5"]) == 0
    runs = sweep.read_runs(tmp_path / "runs.csv")
    assert sorted(zip(runs["step_share"], runs["free_bits"])) == [(0.5, 0.0), (1.0, 0.0),
                                                                   (1.0, 0.5)]
    names = sweep.summarise(runs).index.get_level_values("model").tolist()
    assert sorted(names) == ["sVAE+, realigned", "sVAE+, realigned, 0.5 of the steps",
                             "sVAE+, realigned, free bits 0.5"]

    def refuse(self, log=print):
        raise AssertionError("refitted a finished run")

    monkeypatch.setattr(sweep.SparseShiftBenchmark, "run", refuse)
    for extra in (["--step-share", "0.5"], ["--free-bits", "0.5"]):
        assert sweep.main(args + extra) == 0  # resumed: nothing left to fit
