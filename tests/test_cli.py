"""The ``causalcell`` command: demo and fit outputs, errors, help, and the console script."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import torch
import pandas as pd
import pytest

from pyro_causalcell import CellData, latent, load
from pyro_causalcell.cli import main
from pyro_causalcell.simulate import cell_types, factorized, invariant_spurious

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAST = ["--max-epochs", "2", "--n-hidden", "16", "--quiet", "--device", "cpu"]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------- demo
DEMO_SMALL = ["--n-latent", "3", "--n-perturbations", "4", "--n-cells-per-perturbation", "40",
              "--n-control-cells", "60", "--n-genes", "40", "--n-hidden", "16", "--quiet",
              "--device", "cpu"]


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "report"
    code = main(["demo", "--out", str(out), "--max-epochs", "3", *DEMO_SMALL])
    return code, out


def test_demo_returns_zero_and_writes_every_output(demo):
    code, out = demo
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        ".causalcell", "counterfactual.png", "demo.h5ad", "elbo.png", "history.csv",
        "latent.png", "metrics.json", "model.pt", "target_probabilities.csv", "targets.png"]
    for name in ("elbo.png", "latent.png", "targets.png", "counterfactual.png"):
        content = (out / name).read_bytes()
        assert content[:8] == PNG_SIGNATURE, name
        assert len(content) > 1000, name
    assert json.loads((out / ".causalcell").read_text())["command"][:2] == ["causalcell", "demo"]


def test_demo_metrics_tell_the_causal_story(demo):
    _, out = demo
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["models"]) == {"svae+", "vae"}
    for name, scores in metrics["models"].items():
        assert 0.0 <= scores["mcc_pearson"] <= 1.0, name
        assert scores["epochs"] == 3 and scores["train_elbo_per_cell"] < 0, name
    targets = metrics["targets"]
    assert targets["true_edges"] >= 4  # every perturbation has at least one target
    assert 0 <= targets["recovered_edges"] <= targets["true_edges"]
    for key in ("precision", "recall", "f1", "auroc"):
        assert 0.0 <= targets[key] <= 1.0, key
    query = metrics["counterfactual"]
    assert query["cells"] == "control" and query["do"]["perturbation"] in {"p0", "p1", "p2", "p3"}
    assert -1.0 <= query["lfc_correlation_with_simulator"] <= 1.0
    assert metrics["n_cells"] == 4 * 40 + 60


def test_demo_history_has_one_row_per_epoch_and_model(demo):
    _, out = demo
    history = pd.read_csv(out / "history.csv")
    assert list(history.columns) == ["epoch", "train_elbo", "validation_elbo", "kl_weight",
                                     "model"]
    assert history["model"].tolist() == ["svae+"] * 3 + ["vae"] * 3
    assert history["epoch"].tolist() == [0, 1, 2] * 2
    assert np.isfinite(history[["train_elbo", "validation_elbo"]].to_numpy()).all()
    np.testing.assert_allclose(history["kl_weight"], [1 / 30, 2 / 30, 3 / 30] * 2)  # warm-up


def test_demo_model_targets_and_anndata_agree(demo):
    from pyro_causalcell import SparseShiftVAE, target_probabilities
    from pyro_causalcell.simulate.sparse_shift import sparse_shift

    _, out = demo
    result = ad.read_h5ad(out / "demo.h5ad")
    assert result.shape == (220, 40)
    for key in ("X_svae_plus", "X_vae"):
        assert result.obsm[key].shape == (220, 3) and np.isfinite(result.obsm[key]).all(), key
    expected = sparse_shift(n_latent=3, n_perturbations=4, n_cells_per_perturbation=40,
                            n_genes=40, n_control_cells=60, max_targets=2, seed=0)
    assert (result.X != expected.X).nnz == 0  # the simulated input is reproduced exactly

    model = load(out / "model.pt")
    assert isinstance(model, SparseShiftVAE) and model.sparsity == "svae+"
    data = CellData.from_anndata(result, schema=model.schema)
    np.testing.assert_allclose(latent(model, data), result.obsm["X_svae_plus"], rtol=1e-5,
                               atol=1e-5)
    table = pd.read_csv(out / "target_probabilities.csv", index_col=0)
    expected_table = target_probabilities(model).loc[table.index]
    np.testing.assert_allclose(table.to_numpy(), expected_table.to_numpy(), rtol=1e-5, atol=1e-6)
    assert list(table.index) == ["p0", "p1", "p2", "p3"]


def test_demo_prints_the_report(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--max-epochs", "1", "--no-vae", *DEMO_SMALL]) == 0
    stdout = capsys.readouterr().out
    report = json.loads(stdout[:stdout.rindex("}") + 1])
    assert report == json.loads((out / "metrics.json").read_text())
    assert set(report["models"]) == {"svae+"}
    assert f"wrote {out}/" in stdout


# ---------------------------------------------------------------------- fit
@pytest.fixture
def h5ad(tmp_path) -> Path:
    folder = tmp_path / "input"
    folder.mkdir()
    path = folder / "cells.h5ad"
    cell_types(n_cells=200, n_genes=30, n_cell_types=3, seed=2).write_h5ad(path)
    return path


def test_fit_writes_latents_and_leaves_the_input_file_alone(h5ad, tmp_path, capsys):
    before = digest(h5ad)
    out = tmp_path / "results"
    code = main(["fit", "--model", "vae", str(h5ad), "--out", str(out), "--domain-key", "batch",
                 "--label-key", "cell_type", "--n-latent", "4", *FAST])
    assert code == 0
    assert digest(h5ad) == before
    assert sorted(p.name for p in h5ad.parent.iterdir()) == ["cells.h5ad"]

    assert {"cells_vae.h5ad", "model.pt", "history.csv", "elbo.png", "latent.png",
            "metrics.json"} <= {p.name for p in out.iterdir()}
    original = ad.read_h5ad(h5ad)
    result = ad.read_h5ad(out / "cells_vae.h5ad")
    assert result.obsm["X_vae"].shape == (200, 4)
    assert np.isfinite(result.obsm["X_vae"]).all()
    pd.testing.assert_frame_equal(result.obs, original.obs)
    assert (result.X != original.X).nnz == 0
    np.testing.assert_array_equal(result.obsm["z_true"], original.obsm["z_true"])
    assert "X_vae" not in original.obsm

    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["model"] == "vae" and metrics["epochs"] == 2 and metrics["n_cells"] == 200
    assert len(pd.read_csv(out / "history.csv")) == 2
    model = load(out / "model.pt")
    assert model.schema.domain_key == "batch" and model.schema.label_key == "cell_type"
    data = CellData.from_anndata(original, schema=model.schema)
    np.testing.assert_allclose(latent(model, data), result.obsm["X_vae"], rtol=1e-5, atol=1e-5)
    assert capsys.readouterr().err == ""


def test_fit_reports_each_latents_activity(h5ad, tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["fit", "--model", "vae", str(h5ad), "--out", str(out), "--n-latent", "4",
                 *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    z = ad.read_h5ad(out / "cells_vae.h5ad").obsm["X_vae"]
    np.testing.assert_allclose(metrics["latent_activity"], z.var(axis=0), rtol=1e-3,
                               atol=1e-4)
    expected = [k for k, v in enumerate(z.var(axis=0)) if v < 0.01]
    assert metrics["inactive_latents"] == expected
    assert ("inactive" in capsys.readouterr().err) == bool(expected)


def test_fit_names_inactive_latents_on_stderr(h5ad, tmp_path, capsys, monkeypatch):
    import pyro_causalcell.infer as infer

    real_latent = infer.latent

    def one_dimension_constant(model, data, *args, **kwargs):
        z = real_latent(model, data, *args, **kwargs)
        z[:, 2] = 0.5 + 0.01 * z[:, 2] / z[:, 2].std()  # variance 1e-4, under 0.01
        return z

    monkeypatch.setattr(infer, "latent", one_dimension_constant)
    out = tmp_path / "results"
    assert main(["fit", "--model", "vae", str(h5ad), "--out", str(out), "--n-latent", "4",
                 *FAST]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["inactive_latents"] == [2]
    assert metrics["latent_activity"][2] == pytest.approx(1e-4, abs=1e-5)
    assert ("causalcell fit: 1 of 4 latents are inactive (their posterior means vary across "
            "cells by a variance under 0.01): [2]; the model describes the cells with the "
            "other 3") in capsys.readouterr().err


def test_fit_on_disk_reads_counts_from_the_file_and_matches_in_memory(h5ad, tmp_path, capsys):
    before = digest(h5ad)
    runs = {}
    for name, extra in (("memory", []), ("disk", ["--on-disk"])):
        out = tmp_path / name
        code = main(["fit", "--model", "vae", str(h5ad), "--out", str(out), "--domain-key",
                     "batch", "--n-latent", "3",
                     *FAST, *extra])
        assert code == 0, capsys.readouterr().err
        runs[name] = ad.read_h5ad(out / "cells_vae.h5ad")
    assert digest(h5ad) == before
    assert runs["disk"].X is None  # the counts stay in the input file
    pd.testing.assert_frame_equal(runs["disk"].obs, runs["memory"].obs)
    assert runs["disk"].obsm["X_vae"].shape == (200, 3)
    assert np.isfinite(runs["disk"].obsm["X_vae"]).all()
    assert main(["fit", "--model", "vae", str(h5ad), "--out", str(tmp_path / "x"),
                 "--on-disk", "--layer", "counts", *FAST]) == 2
    assert "--on-disk reads the counts from X" in capsys.readouterr().err


def test_fit_into_the_folder_of_its_input_is_refused(h5ad, capsys):
    """The input's folder is not empty and holds files causalcell did not write."""
    before = digest(h5ad)
    for extra in ([], ["--overwrite"]):
        code = main(["fit", str(h5ad), "--out", str(h5ad.parent), "--domain-key", "batch",
                     *FAST, *extra])
        assert code == 2
        assert f"--out {h5ad.parent} " in capsys.readouterr().err
    assert digest(h5ad) == before
    assert sorted(p.name for p in h5ad.parent.iterdir()) == ["cells.h5ad"]


def test_fit_with_a_bad_key_exits_2_with_the_validation_message(h5ad, tmp_path, capsys):
    out = tmp_path / "results"
    code = main(["fit", str(h5ad), "--out", str(out), "--domain-key", "nope", *FAST])
    assert code == 2
    captured = capsys.readouterr()
    assert "causalcell fit: domain_key='nope' is not a column of adata.obs" in captured.err
    assert "['cell_type', 'batch']" in captured.err  # the message names the columns
    assert "Traceback" not in captured.err
    assert not (out / "cells_vae.h5ad").exists() and not (out / "model.pt").exists()


def test_fit_of_a_missing_file_fails_with_a_message(tmp_path, capsys):
    missing = tmp_path / "missing.h5ad"
    code = main(["fit", str(missing), "--out", str(tmp_path / "out")])
    message = capsys.readouterr().err
    assert code == 2
    assert f"{missing} does not exist" in message
    assert not (tmp_path / "out").exists()


def test_fit_refuses_an_unknown_model(h5ad, tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--model", "nope", str(h5ad), "--out", str(tmp_path)])
    assert info.value.code == 2
    assert "invalid choice: 'nope'" in capsys.readouterr().err


@pytest.fixture
def screen_h5ad(tmp_path) -> Path:
    """A small simulated screen: 4 perturbations x 30 cells and 30 controls, 40 genes."""
    from pyro_causalcell.simulate.sparse_shift import sparse_shift

    path = tmp_path / "screen.h5ad"
    sparse_shift(n_latent=3, n_perturbations=4, n_cells_per_perturbation=30, n_genes=40,
                 n_control_cells=30, seed=0).write_h5ad(path)
    return path


def test_fit_svae_plus_writes_target_probabilities(screen_h5ad, tmp_path, capsys):
    path = screen_h5ad
    out = tmp_path / "out"
    code = main(["fit", "--model", "svae+", str(path), "--out", str(out), "--perturbation-key",
                 "perturbation", "--control", "control", "--n-latent", "3", *FAST])
    assert code == 0
    table = pd.read_csv(out / "target_probabilities.csv", index_col=0)
    assert list(table.index) == ["p0", "p1", "p2", "p3"] and table.shape == (4, 3)
    assert ((table > 0) & (table < 1)).all().all()
    report = json.loads(capsys.readouterr().out.split("\nwrote")[0])
    assert report["model"] == "svae+"
    # settings left at "auto" follow the sparse-shift schedule of 150 cells (batch 64 leaves
    # the fewest minibatches, lr 0.01, warm-up 50, free bits 0.5); the given --max-epochs wins
    assert report["schedule"] == dict(max_epochs=2, batch_size=64, lr=0.01,
                                      kl_warmup_epochs=50, free_bits=0.5, realign=False)
    # the default sparsity weight was set from the 27 training cells per perturbation
    model = load(out / "model.pt")
    assert model.sparsity_weight == pytest.approx(0.4 * 27, abs=0.4 * 3)
    # no --n-layers: the model's own two hidden layers, as SparseShiftVAE(...) builds in Python
    assert model.init_args["n_layers"] == 2 and model.init_args["n_hidden"] == 16
    with pytest.raises(SystemExit):
        main(["fit", "--model", "svae+", str(path), "--out", str(tmp_path / "o2"),
              "--sparsity-weight", "strong", *FAST])
    assert "--sparsity-weight: invalid positive_float_or_auto value: 'strong'" in (
        capsys.readouterr().err)


def test_fit_settings_left_at_auto_are_the_generic_schedule_for_a_vae(h5ad, tmp_path, capsys):
    assert main(["fit", "--model", "vae", str(h5ad), "--out", str(tmp_path / "a"), *FAST]) == 0
    report = json.loads(capsys.readouterr().out.split("\nwrote")[0])
    assert report["schedule"] == dict(max_epochs=2, batch_size=128, lr=1e-3,
                                      kl_warmup_epochs=10, free_bits=0.0, realign=False)
    assert main(["fit", "--model", "vae", str(h5ad), "--out", str(tmp_path / "b"), *FAST,
                 "--batch-size", "32", "--lr", "0.005", "--kl-warmup-epochs", "0",
                 "--free-bits", "0.5"]) == 0
    report = json.loads(capsys.readouterr().out.split("\nwrote")[0])
    assert report["schedule"] == dict(max_epochs=2, batch_size=32, lr=0.005,
                                      kl_warmup_epochs=0, free_bits=0.5, realign=False)


def test_fit_realign_fits_svae_plus_in_two_parts(screen_h5ad, tmp_path, capsys):
    code = main(["fit", "--model", "svae+", str(screen_h5ad), "--out", str(tmp_path / "out"),
                 "--perturbation-key", "perturbation", "--control", "control", "--n-latent",
                 "3", "--realign", *FAST, "--max-epochs", "3"])
    assert code == 0
    report = json.loads(capsys.readouterr().out.split("\nwrote")[0])
    assert report["schedule"]["realign"] is True and report["epochs"] == 3
    # two epochs warming up over the schedule's 50, the realignment, one epoch at weight 1
    history = pd.read_csv(tmp_path / "out" / "history.csv")
    assert history["kl_weight"].tolist() == pytest.approx([1 / 50, 2 / 50, 1.0])


@pytest.mark.parametrize("argv, message", [
    (["--model", "vae"], "--realign: --model vae has no sparse perturbation targets to align "
                         "the latents with"),
    (["--model", "svae+", "--max-epochs", "1"], "--realign fits in two parts: give "
                                                "--max-epochs of at least 2"),
    (["--model", "svae+", "--checkpoint", "fit.ckpt"], "--realign fits in two parts, which "
                                                       "one --checkpoint file cannot hold"),
])
def test_realign_is_refused_where_it_cannot_run(screen_h5ad, tmp_path, capsys, argv, message):
    code = main(["fit", str(screen_h5ad), "--out", str(tmp_path / "o"), "--perturbation-key",
                 "perturbation", "--control", "control", "--realign", *FAST, *argv])
    assert code == 2
    assert message in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_benchmark_sparse_shift_writes_its_table(tmp_path):
    out = tmp_path / "bench"
    code = main(["benchmark", "sparse-shift", "--quick", "--models", "VAE,sVAE+",
                 "--max-epochs", "2", "--transfer-epochs", "1", "--n-importance-samples", "2",
                 "--out", str(out), "--quiet", "--device", "cpu"])
    assert code == 0
    table = pd.read_csv(out / "table.csv", index_col=0)
    assert list(table.index) == ["VAE", "sVAE+"]
    assert {"mcc_pearson", "target_f1", "target_auroc", "heldout_iwelbo",
            "fit_seconds"} <= set(table.columns)
    measured = table.drop(columns=["transfer_seconds", "sparsity_weight", "options", "realign"])
    assert np.isfinite(measured.to_numpy()).all()
    assert table["options"].isna().all()  # no model_options: an empty cell
    assert not table["realign"].any()  # fitted without --realign
    assert (table["free_bits"] == 0).all()  # nor --free-bits
    # sVAE+'s lambda was set from its 90 training cells per perturbation; the VAE has none
    assert table.loc["sVAE+", "sparsity_weight"] == pytest.approx(0.4 * 90)
    assert np.isnan(table.loc["VAE", "sparsity_weight"])
    assert (out / "targets.png").read_bytes().startswith(PNG_SIGNATURE)
    fitted = np.load(out / "fitted.npz")
    assert fitted["sVAE+__latent"].shape[1] == 6 and fitted["sVAE+__targets"].shape == (20, 6)
    assert {"target_f1_abs", "target_auroc_abs"} <= set(table.columns)
    assert (out / "table.md").read_text().startswith("| model |")


def test_benchmark_restarts_keep_the_best_validation_elbo(tmp_path):
    out = tmp_path / "bench"
    code = main(["benchmark", "sparse-shift", "--quick", "--models", "sVAE+", "--restarts", "2",
                 "--max-epochs", "2", "--transfer-epochs", "1", "--n-importance-samples", "2",
                 "--out", str(out), "--quiet", "--device", "cpu"])
    assert code == 0
    row = pd.read_csv(out / "table.csv", index_col=0).loc["sVAE+"]
    scores = [float(x) for x in row["restart_validation_elbos"].split(";")]
    assert row["restarts"] == 2 and len(scores) == 2
    assert row["kept_restart"] == scores.index(max(scores))
    assert json.loads((out / "settings.json").read_text())["restarts"] == 2


def test_benchmark_realign_fits_svae_plus_around_a_realignment(tmp_path):
    out = tmp_path / "bench"
    code = main(["benchmark", "sparse-shift", "--quick", "--models", "VAE,sVAE+", "--realign",
                 "--max-epochs", "3", "--transfer-epochs", "1", "--n-importance-samples", "2",
                 "--free-bits", "0.5", "--out", str(out), "--quiet", "--device", "cpu"])
    assert code == 0
    table = pd.read_csv(out / "table.csv", index_col=0)
    assert table["realign"].to_dict() == {"VAE": False, "sVAE+": True}
    assert table["free_bits"].to_dict() == {"VAE": 0.5, "sVAE+": 0.5}
    settings = json.loads((out / "settings.json").read_text())
    assert settings["realign"] is True and settings["free_bits"] == 0.5


def test_benchmark_refuses_zero_restarts(tmp_path, capsys):
    with pytest.raises(SystemExit) as info:
        main(["benchmark", "sparse-shift", "--quick", "--restarts", "0",
              "--out", str(tmp_path), "--quiet"])
    assert info.value.code == 2
    assert "argument --restarts: must be >= 1, got 0" in capsys.readouterr().err


def test_benchmark_refuses_an_unknown_model(tmp_path, capsys):
    code = main(["benchmark", "sparse-shift", "--quick", "--models", "VAE,LDA",
                 "--out", str(tmp_path), "--quiet"])
    assert code == 2
    assert "unknown models ['LDA']" in capsys.readouterr().err


# ---------------------------------------------------------------------- user errors
def one_line_error(capsys, command: str = "fit") -> str:
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith(f"causalcell {command}: "), err
    return lines[0]


@pytest.mark.parametrize("content", [b"", b"cell,gene\n1,2\n"], ids=["empty", "csv"])
def test_fit_of_a_file_that_is_not_h5ad(tmp_path, capsys, content):
    path = tmp_path / "cells.h5ad"
    path.write_bytes(content)
    assert main(["fit", str(path), "--out", str(tmp_path / "out"), *FAST]) == 2
    assert f"{path} cannot be read as an AnnData .h5ad file" in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.h5ad"]  # nothing left behind


def test_fit_of_a_directory(tmp_path, capsys):
    assert main(["fit", str(tmp_path), "--out", str(tmp_path / "out"), *FAST]) == 2
    assert f"{tmp_path} is a directory; pass the path of an .h5ad file" in one_line_error(capsys)


def test_an_unknown_device_exits_2(h5ad, tmp_path, capsys):
    assert main(["fit", str(h5ad), "--out", str(tmp_path / "o"), *FAST, "--device", "tpu"]) == 2
    assert "device='tpu' is not a device torch knows" in one_line_error(capsys)


def test_out_naming_a_file_exits_2(h5ad, tmp_path, capsys):
    target = tmp_path / "results.txt"
    target.write_text("keep me")
    assert main(["fit", str(h5ad), "--out", str(target), *FAST]) == 2
    assert f"--out {target} is a file; name a folder" in one_line_error(capsys)
    assert target.read_text() == "keep me"


def test_a_diverged_fit_exits_2_and_leaves_no_output(h5ad, tmp_path, capsys, monkeypatch):
    import pyro_causalcell.infer as infer
    from pyro_causalcell.infer import TrainingDivergedError, TrainingHistory

    def diverge(*args, **kwargs):
        raise TrainingDivergedError("the loss became nan at epoch 0, step 3; ...",
                                    TrainingHistory())

    monkeypatch.setattr(infer, "fit", diverge)
    out = tmp_path / "results"
    assert main(["fit", str(h5ad), "--out", str(out), *FAST]) == 2
    assert "the loss became nan at epoch 0" in one_line_error(capsys)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input"]  # no folder, no leftovers


def test_a_genuine_bug_still_shows_its_traceback(h5ad, tmp_path, monkeypatch):
    import pyro_causalcell.infer as infer

    def bug(*args, **kwargs):
        raise ValueError("an internal bug")

    monkeypatch.setattr(infer, "fit", bug)
    with pytest.raises(ValueError, match="an internal bug"):
        main(["fit", str(h5ad), "--out", str(tmp_path / "results"), *FAST])
    assert not (tmp_path / "results").exists()


@pytest.mark.parametrize("argv", [["--max-epochs", "0"], ["--lr", "-1"],
                                  ["--validation-fraction", "1.5"], ["--batch-size", "x"]])
def test_bad_numbers_are_argparse_errors(h5ad, tmp_path, capsys, argv):
    with pytest.raises(SystemExit) as info:
        main(["fit", str(h5ad), "--out", str(tmp_path / "o"), *argv])
    assert info.value.code == 2
    assert f"argument {argv[0]}: " in capsys.readouterr().err


def test_version(capsys):
    from pyro_causalcell import __version__

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"causalcell (pyro_causalcell) {__version__}"


# ---------------------------------------------------------------------- the output folder
def test_a_non_empty_out_is_refused_unless_overwrite(h5ad, tmp_path, capsys):
    out = tmp_path / "results"
    args = ["fit", str(h5ad), "--out", str(out), "--domain-key", "batch", *FAST]
    assert main(args) == 0
    capsys.readouterr()
    first = digest(out / "model.pt")
    assert main(args) == 2
    assert f"--out {out} is not empty" in one_line_error(capsys)
    assert digest(out / "model.pt") == first
    assert main([*args, "--overwrite", "--seed", "5"]) == 0
    assert digest(out / "model.pt") != first
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input", "results"]


def test_overwrite_replaces_a_previous_run_as_a_whole(h5ad, tmp_path):
    from pyro_causalcell.simulate.sparse_shift import sparse_shift

    screen = tmp_path / "input" / "screen.h5ad"
    sparse_shift(n_latent=2, n_perturbations=2, n_cells_per_perturbation=30, n_genes=40,
                 n_control_cells=30, seed=0).write_h5ad(screen)
    out = tmp_path / "results"
    assert main(["fit", "--model", "svae+", str(screen), "--out", str(out), "--perturbation-key",
                 "perturbation", "--control", "control", "--n-latent", "2", *FAST]) == 0
    assert (out / "target_probabilities.csv").exists()
    assert main(["fit", "--model", "vae", str(h5ad), "--out", str(out), *FAST,
                 "--overwrite"]) == 0
    # no stale file of the previous run beside the new ones
    assert not (out / "target_probabilities.csv").exists()
    assert not (out / "screen_svae+.h5ad").exists() and (out / "cells_vae.h5ad").exists()


def test_overwrite_refuses_a_folder_with_the_users_files(h5ad, tmp_path, capsys):
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("my notes")
    assert main(["fit", str(h5ad), "--out", str(out), *FAST, "--overwrite"]) == 2
    assert "holds files causalcell did not write (notes.txt" in one_line_error(capsys)
    assert sorted(p.name for p in out.iterdir()) == ["notes.txt"]


def test_overwrite_refuses_to_replace_the_folder_holding_the_input(h5ad, tmp_path, capsys):
    out = tmp_path / "results"
    assert main(["fit", str(h5ad), "--out", str(out), *FAST]) == 0
    capsys.readouterr()
    inside = out / "cells_vae.h5ad"
    assert main(["fit", str(inside), "--out", str(out), *FAST, "--overwrite"]) == 2
    assert "lies inside --out" in one_line_error(capsys)
    assert inside.exists()


def test_a_failure_while_writing_keeps_the_previous_run(h5ad, tmp_path, capsys, monkeypatch):
    out = tmp_path / "results"
    args = ["fit", str(h5ad), "--out", str(out), *FAST]
    assert main(args) == 0
    before = {p.name: digest(p) for p in out.iterdir()}

    import anndata

    def disk_full(self, *a, **k):
        raise PermissionError("[Errno 13] Permission denied: 'cells_vae.h5ad'")

    monkeypatch.setattr(anndata.AnnData, "write_h5ad", disk_full)
    assert main([*args, "--overwrite", "--seed", "3"]) == 2
    assert "Permission denied" in one_line_error(capsys)
    assert {p.name: digest(p) for p in out.iterdir()} == before  # the old run, untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["input", "results"]


# ---------------------------------------------------------------------- help
@pytest.mark.parametrize("argv, mentions", [
    (["--help"], ["demo", "fit", "benchmark", "causalcell demo --out", "--help"]),
    (["benchmark", "sparse-shift", "--help"], ["--out", "--models", "--max-epochs",
                                               "--transfer-epochs", "--quick", "--seed"]),
    (["demo", "--help"], ["--out", "--n-perturbations", "--n-cells-per-perturbation",
                          "--n-control-cells", "--n-genes", "--n-latent", "--sparsity-weight",
                          "--max-epochs", "--batch-size", "--lr", "--device", "--seed",
                          "--quiet", "--overwrite", "--no-vae", "targets.png",
                          "counterfactual.png"]),
    (["fit", "--help"], ["data", "--model", "--out", "--layer", "--perturbation-key",
                         "--control", "--domain-key", "--label-key", "--dose-key",
                         "--library-key", "--n-latent", "--max-epochs", "--quiet"]),
])
def test_help_exits_0_and_mentions_the_options(argv, mentions, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    stdout = capsys.readouterr().out
    assert stdout.startswith("usage: causalcell")
    for option in mentions:
        assert option in stdout, option


def test_no_command_prints_help_and_returns_1(capsys):
    assert main([]) == 1
    stdout = capsys.readouterr().out
    assert stdout.startswith("usage: causalcell")
    assert "demo" in stdout and "fit" in stdout


def test_console_script_runs():
    script = shutil.which("causalcell", path=str(Path(sys.executable).parent))
    if script is None:
        pytest.skip("the causalcell console script is not installed next to this Python")
    done = subprocess.run([script, "--help"], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("usage: causalcell")
    assert "causalcell fit --model vae" in done.stdout


def test_an_unavailable_device_exits_2_with_a_message(h5ad, tmp_path, capsys):
    if torch.cuda.is_available():
        pytest.skip("CUDA is available here")
    code = main(["fit", str(h5ad), "--out", str(tmp_path / "o"), *FAST, "--device", "cuda"])
    assert code == 2
    assert "device='cuda' was requested but CUDA is not available" in capsys.readouterr().err


def test_the_same_seed_gives_the_same_demo(tmp_path):
    reports = []
    for name in ("a", "b"):
        assert main(["demo", "--out", str(tmp_path / name), "--max-epochs", "2", "--no-vae",
                     *DEMO_SMALL]) == 0
        report = json.loads((tmp_path / name / "metrics.json").read_text())
        for scores in report["models"].values():
            scores.pop("training_seconds")
        reports.append(report)
    assert reports[0] == reports[1]


@pytest.mark.parametrize("name, model_class, main_block", [
    ("multigroupvi", "MultiGroupVI", "n_latent_shared"), ("hsicvae", "HSICVAE", "n_latent")])
def test_fit_shared_private_and_hsic_models(h5ad, tmp_path, name, model_class, main_block):
    out = tmp_path / "results"
    code = main(["fit", "--model", name, str(h5ad), "--out", str(out), "--domain-key", "batch",
                 "--n-latent", "3", *FAST])
    assert code == 0
    assert ad.read_h5ad(out / f"cells_{name}.h5ad").obsm[f"X_{name}"].shape == (200, 3)
    model = load(out / "model.pt")
    assert type(model).__name__ == model_class and model.init_args[main_block] == 3
    assert model.init_args["n_hidden"] == 16  # FAST's --n-hidden, passed through **kwargs too


def test_fit_hsicvae_with_a_nuisance_block(h5ad, tmp_path):
    out = tmp_path / "results"
    code = main(["fit", "--model", "hsicvae", str(h5ad), "--out", str(out), "--domain-key",
                 "batch", "--n-latent", "3", "--nuisance-latent", "2", *FAST])
    assert code == 0
    assert ad.read_h5ad(out / "cells_hsicvae.h5ad").obsm["X_hsicvae"].shape == (200, 3)
    assert load(out / "model.pt").init_args["nuisance_latent"] == 2


def test_fit_invae_writes_its_invariant_latents(h5ad, tmp_path):
    out = tmp_path / "results"
    code = main(["fit", "--model", "invae", str(h5ad), "--out", str(out), "--domain-key",
                 "batch", "--label-key", "cell_type", "--n-latent", "3", *FAST])
    assert code == 0
    result = ad.read_h5ad(out / "cells_invae.h5ad")
    assert result.obsm["X_invae"].shape == (200, 3)
    model = load(out / "model.pt")
    assert type(model).__name__ == "InVAE" and model.invariant == ["label"]


def test_fit_fcr_writes_its_treatment_latents(tmp_path):
    path = tmp_path / "cells.h5ad"
    factorized(n_cells=200, n_genes=30, n_covariates=2, n_treatments=2, seed=1).write_h5ad(path)
    out = tmp_path / "results"
    code = main(["fit", "--model", "fcr", str(path), "--out", str(out), "--perturbation-key",
                 "treatment", "--control", "control", "--domain-key", "covariate",
                 "--dose-key", "dose", "--n-latent", "3", *FAST])
    assert code == 0
    assert ad.read_h5ad(out / "cells_fcr.h5ad").obsm["X_fcr"].shape == (200, 3)
    model = load(out / "model.pt")
    assert type(model).__name__ == "FCR" and model.init_args["n_latent_t"] == 3
    assert model.schema.dose_key == "dose"


def test_fit_lord_runs_both_stages_and_writes_the_content(tmp_path):
    path = tmp_path / "cells.h5ad"
    invariant_spurious(n_cells=200, n_genes=30, seed=1).write_h5ad(path)
    out = tmp_path / "results"
    code = main(["fit", "--model", "lord", str(path), "--out", str(out), "--label-key", "label",
                 "--class-key", "label", "--n-latent", "3", "--encoder-epochs", "2", *FAST])
    assert code == 0
    assert ad.read_h5ad(out / "cells_lord.h5ad").obsm["X_lord"].shape == (200, 3)
    model = load(out / "model.pt")
    assert type(model).__name__ == "LORD" and model.stage == 2
    assert model.codes.shape == (200, 3)
    history = pd.read_csv(out / "history.csv")
    assert len(history) == 2 and "penalty_content_match" in history.columns  # stage two
    assert len(pd.read_csv(out / "history_stage_one.csv")) == 2
    code = main(["fit", "--model", "lord", str(path), "--out", str(tmp_path / "r2"),
                 "--class-key", "domain", *FAST])
    assert code == 2  # the data has no domain: a one-line error


def test_fit_checkpoints_and_a_rerun_resumes(tmp_path, capsys):
    path = tmp_path / "cells.h5ad"
    invariant_spurious(n_cells=200, n_genes=30, seed=1).write_h5ad(path)
    checkpoint = tmp_path / "fit.ckpt"
    command = ["fit", str(path), "--out", str(tmp_path / "r"), "--domain-key", "domain",
               "--checkpoint", str(checkpoint), *FAST]
    assert main(command) == 0 and checkpoint.exists()
    first = pd.read_csv(tmp_path / "r" / "history.csv")
    assert main([*command, "--overwrite"]) == 0  # finished: resumes and trains no epoch more
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "r" / "history.csv"), first)
    assert main([*command[:-len(FAST)], *FAST, "--overwrite", "--batch-size", "32"]) == 2
    assert "batch_size: 128 then, 32 now" in capsys.readouterr().err
    lord = ["fit", "--model", "lord", str(path), "--out", str(tmp_path / "l"), "--label-key",
            "label", "--checkpoint", str(tmp_path / "lord.ckpt"), "--encoder-epochs", "2", *FAST]
    assert main(lord) == 0
    assert (tmp_path / "lord.ckpt").exists() and (tmp_path / "lord.ckpt.stage1").exists()
