"""The ``causalcell`` command: demo and fit outputs, errors, help, and the console script."""

from __future__ import annotations

import hashlib
import json
import math
import shutil
import subprocess
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import torch
import pandas as pd
import pytest

from pyro_causalcell import VAE, CellData, latent, load
from pyro_causalcell.cli import main
from pyro_causalcell.simulate import cell_types

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
FAST = ["--max-epochs", "2", "--n-hidden", "16", "--quiet", "--device", "cpu"]


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


# ---------------------------------------------------------------------- demo
@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo") / "report"
    code = main(["demo", "--out", str(out), "--n-cells", "300", "--n-genes", "30",
                 "--max-epochs", "3", "--quiet"])
    return code, out


def test_demo_returns_zero_and_writes_every_output(demo):
    code, out = demo
    assert code == 0
    assert sorted(p.name for p in out.iterdir()) == [
        "demo.h5ad", "elbo.png", "history.csv", "latent.png", "metrics.json", "model.pt"]
    for name in ("elbo.png", "latent.png"):
        content = (out / name).read_bytes()
        assert content[:8] == PNG_SIGNATURE, name
        assert len(content) > 1000, name


def test_demo_metrics_are_complete_and_finite(demo):
    _, out = demo
    metrics = json.loads((out / "metrics.json").read_text())
    assert {"model", "n_cells", "n_genes", "epochs", "train_elbo_per_cell",
            "validation_elbo_per_cell", "best_epoch", "training_seconds", "mcc_pearson",
            "mcc_spearman", "linear_r2"} <= set(metrics)
    assert metrics["model"] == "vae"
    assert (metrics["n_cells"], metrics["n_genes"], metrics["epochs"]) == (300, 30, 3)
    for key in ("train_elbo_per_cell", "validation_elbo_per_cell", "training_seconds"):
        assert isinstance(metrics[key], float) and math.isfinite(metrics[key]), key
    assert metrics["train_elbo_per_cell"] < 0 and metrics["validation_elbo_per_cell"] < 0
    for key in ("mcc_pearson", "mcc_spearman", "linear_r2"):
        assert isinstance(metrics[key], float) and 0.0 <= metrics[key] <= 1.0, key
    assert metrics["best_epoch"] in (None, 0, 1, 2)  # an epoch when early stopping is on


def test_demo_history_has_one_row_per_epoch(demo):
    _, out = demo
    history = pd.read_csv(out / "history.csv")
    assert list(history.columns) == ["epoch", "train_elbo", "validation_elbo", "kl_weight"]
    assert len(history) == 3
    assert history["epoch"].tolist() == [0, 1, 2]
    assert np.isfinite(history[["train_elbo", "validation_elbo"]].to_numpy()).all()
    np.testing.assert_allclose(history["kl_weight"], [0.1, 0.2, 0.3])  # 10 warm-up epochs
    metrics = json.loads((out / "metrics.json").read_text())
    assert history["train_elbo"].iloc[-1] == pytest.approx(metrics["train_elbo_per_cell"])


def test_demo_model_and_anndata_agree(demo):
    _, out = demo
    result = ad.read_h5ad(out / "demo.h5ad")
    assert result.shape == (300, 30)
    assert result.obsm["X_vae"].shape == (300, 5)  # the demo's default n_latent
    assert np.isfinite(result.obsm["X_vae"]).all()
    assert result.obsm["z_true"].shape[0] == 300
    assert {"cell_type", "batch"} <= set(result.obs.columns)
    # the simulated input is reproduced exactly (seed 0)
    expected = cell_types(n_cells=300, n_genes=30, seed=0)
    assert (result.X != expected.X).nnz == 0

    model = load(out / "model.pt")
    assert isinstance(model, VAE)
    assert model.n_latent == 5 and model.schema.domain_key == "batch"
    data = CellData.from_anndata(result, schema=model.schema)
    np.testing.assert_allclose(latent(model, data), result.obsm["X_vae"], rtol=1e-5, atol=1e-5)


def test_demo_prints_the_report(tmp_path, capsys):
    assert main(["demo", "--out", str(tmp_path), "--n-cells", "120", "--n-genes", "20",
                 "--max-epochs", "1", "--n-hidden", "16", "--quiet", "--device", "cpu"]) == 0
    stdout = capsys.readouterr().out
    report = json.loads(stdout[:stdout.rindex("}") + 1])
    assert report == json.loads((tmp_path / "metrics.json").read_text())
    assert f"wrote {tmp_path}/" in stdout


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


def test_fit_into_the_folder_of_its_input_does_not_overwrite_the_input(h5ad):
    """``--out`` may be the input's own folder; the input file must still not change."""
    before = digest(h5ad)
    main(["fit", str(h5ad), "--out", str(h5ad.parent), "--domain-key", "batch", *FAST])
    assert digest(h5ad) == before


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


def test_fit_svae_plus_writes_target_probabilities(tmp_path, capsys):
    from pyro_causalcell.simulate.sparse_shift import sparse_shift

    path = tmp_path / "screen.h5ad"
    sparse_shift(n_latent=3, n_perturbations=4, n_cells_per_perturbation=30, n_genes=40,
                 n_control_cells=30, seed=0).write_h5ad(path)
    out = tmp_path / "out"
    code = main(["fit", "--model", "svae+", str(path), "--out", str(out), "--perturbation-key",
                 "perturbation", "--control", "control", "--n-latent", "3", *FAST])
    assert code == 0
    table = pd.read_csv(out / "target_probabilities.csv", index_col=0)
    assert list(table.index) == ["p0", "p1", "p2", "p3"] and table.shape == (4, 3)
    assert ((table > 0) & (table < 1)).all().all()
    assert json.loads(capsys.readouterr().out.split("\nwrote")[0])["model"] == "svae+"


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
    assert np.isfinite(table.drop(columns=["transfer_seconds"]).to_numpy()).all()
    assert (out / "targets.png").read_bytes().startswith(PNG_SIGNATURE)
    fitted = np.load(out / "fitted.npz")
    assert fitted["sVAE+__latent"].shape[1] == 6 and fitted["sVAE+__targets"].shape == (20, 6)
    assert {"target_f1_abs", "target_auroc_abs"} <= set(table.columns)
    assert (out / "table.md").read_text().startswith("| model |")


def test_benchmark_refuses_an_unknown_model(tmp_path, capsys):
    code = main(["benchmark", "sparse-shift", "--quick", "--models", "VAE,LDA",
                 "--out", str(tmp_path), "--quiet"])
    assert code == 2
    assert "unknown models ['LDA']" in capsys.readouterr().err


# ---------------------------------------------------------------------- help
@pytest.mark.parametrize("argv, mentions", [
    (["--help"], ["demo", "fit", "benchmark", "causalcell demo --out", "--help"]),
    (["benchmark", "sparse-shift", "--help"], ["--out", "--models", "--max-epochs",
                                               "--transfer-epochs", "--quick", "--seed"]),
    (["demo", "--help"], ["--out", "--n-cells", "--n-genes", "--n-latent", "--beta",
                          "--likelihood", "--max-epochs", "--batch-size", "--lr", "--device",
                          "--seed", "--quiet", "--early-stopping"]),
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
        assert main(["demo", "--out", str(tmp_path / name), "--n-cells", "200", "--n-genes", "20",
                     "--max-epochs", "2", "--quiet", "--device", "cpu"]) == 0
        report = json.loads((tmp_path / name / "metrics.json").read_text())
        report.pop("training_seconds")
        reports.append(report)
    assert reports[0] == reports[1]
