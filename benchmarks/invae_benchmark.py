"""InVAE side by side with the authors' ``invae`` package, our VAE and scvi-tools' SCVI.

One run, one seed, the same cells, genes and train / test split for every method. Three data
sets:

* ``simulation``: ``simulate.invariant_spurious`` with weak biology and a strong batch effect
  (label strength 1.2, domain strength 3.0, 100 genes). Training cells: 2,000 cells in which
  94% of cells sit in the batch tied to their label (``label_domain_correlation=0.9``); test
  cells: 1,000 cells of the same world with label and batch independent. Scores: MCC of the
  invariant latent against the true invariant latents (test cells), label accuracy on the test
  cells after the label/batch association is removed;
* ``pbmc``: ``pbmc_3x10xchem_savercat.h5ad`` (3 10x chemistries, 3 cell types), 2,000 most
  variable genes; chemistry ``VDJ`` held out;
* ``kang``: ``kang2018_ctrl_8donors_muscat_kangse.h5ad`` (8 donors, 8 cell types, 1,287
  genes); donor ``1016`` held out.

For the real data sets: label silhouette and batch mixing (scIB-style, ``pyro_causalcell.
metrics``) of every cell's invariant latent, and cell-type accuracy on the held-out
technology / donor, whose labels and batch no method sees. Accuracy is a linear classifier
(``pyro_causalcell.infer.train_classifier``) trained on the training cells' latents and applied
to the test cells' latents, the same for every method; the ``invae`` package's own classifier
route is reported beside it. Epoch time is training seconds per epoch, as a ratio to the
``invae`` package (same batch size, 256, for every method).

Methods: ``InVAE`` (defaults: prior "both", conditional-invariance weight 10, encoder on counts
only; trained with ``BalancedSampler(["label", "domain"])``), ``VAE`` (``use_domain=False``: the encoder must read counts alone to encode an unseen
batch), the ``invae`` package (``FinVAE``, its README settings; run by
``benchmarks/external/run_invae.py`` in its own virtual environment) and SCVI with the batch key
(``benchmarks/external/run_scvi.py``, its own environment; unseen batches mapped with
``load_query_data``). Their environments are made as the two scripts' docstrings say; pass their
Python executables, or leave them out to run our models alone.

    python benchmarks/invae_benchmark.py --out bench_invae \\
        --invae-python /work/bench_envs/invae/bin/python \\
        --scvi-python /work/bench_envs/scvi/bin/python        # about 25 minutes on 2 CPU cores

Prints a markdown table and writes ``results.csv`` and ``results.md`` to ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

import pyro_causalcell as pcc
from pyro_causalcell.infer import train_classifier
from pyro_causalcell.metrics import batch_mixing, label_silhouette, mean_correlation_coefficient
from pyro_causalcell.simulate import invariant_spurious

HERE = Path(__file__).resolve().parent
LABEL, BATCH, SPLIT = "label", "batch", "split"


def data_dir() -> Path:
    default = HERE.parents[0].parent / "shared" / "data"
    return Path(os.environ.get("CAUSALCELL_DATA_DIR", default))


# ---------------------------------------------------------------------------------- data sets
def _standard(adata: ad.AnnData, label: str, batch: str, test: np.ndarray) -> ad.AnnData:
    """Counts as CSR int, obs = label / batch / split; genes and cells without counts in the
    training cells dropped (no method can learn them)."""
    x = sp.csr_matrix(adata.X).astype(np.int64)
    keep_genes = np.asarray(x[~test].sum(0)).ravel() > 0
    x = x[:, keep_genes]
    keep_cells = np.asarray(x.sum(1)).ravel() > 0
    obs = pd.DataFrame({LABEL: adata.obs[label].astype(str).to_numpy(),
                        BATCH: adata.obs[batch].astype(str).to_numpy(),
                        SPLIT: np.where(test, "test", "train")}, index=adata.obs_names)
    out = ad.AnnData(x[keep_cells], obs=obs[keep_cells],
                     var=pd.DataFrame(index=adata.var_names[keep_genes]))
    for key, value in adata.obsm.items():
        out.obsm[key] = np.asarray(value)[keep_cells]
    return out


def simulation(seed: int) -> ad.AnnData:
    world = dict(n_genes=100, label_strength=1.2, domain_strength=3.0, world_seed=seed)
    train = invariant_spurious(n_cells=2000, seed=seed, label_domain_correlation=0.9, **world)
    test = invariant_spurious(n_cells=1000, seed=seed + 100, **world)
    test.obs_names = [f"test-{n}" for n in test.obs_names]
    both = ad.concat([train, test])
    return _standard(both, "label", "domain", np.arange(both.n_obs) >= train.n_obs)


def most_variable_genes(counts: sp.csr_matrix, n_genes: int) -> np.ndarray:
    """Indices of the ``n_genes`` genes of largest variance of log1p(counts per 10,000)."""
    totals = np.asarray(counts.sum(1)).ravel()
    normalised = sp.diags(1e4 / totals) @ counts
    normalised.data = np.log1p(normalised.data)
    mean = np.asarray(normalised.mean(0)).ravel()
    variance = np.asarray(normalised.multiply(normalised).mean(0)).ravel() - mean ** 2
    return np.sort(np.argsort(-variance)[:n_genes])


def pbmc() -> ad.AnnData:
    adata = ad.read_h5ad(data_dir() / "pbmc_3x10xchem_savercat.h5ad")
    adata = adata[:, most_variable_genes(sp.csr_matrix(adata.X), 2000)].copy()
    return _standard(adata, "celltype", "tech", (adata.obs["tech"] == "VDJ").to_numpy())


def kang() -> ad.AnnData:
    adata = ad.read_h5ad(data_dir() / "kang2018_ctrl_8donors_muscat_kangse.h5ad")
    return _standard(adata, "cell_type", "donor", (adata.obs["donor"] == "1016").to_numpy())


DATASETS = {"simulation": simulation, "pbmc": lambda seed: pbmc(), "kang": lambda seed: kang()}
EPOCHS = {"simulation": 150, "pbmc": 200, "kang": 60}


# -------------------------------------------------------------------------------- methods
def run_ours(name: str, adata: ad.AnnData, epochs: int, seed: int, n_latent: int) -> dict:
    train = adata[adata.obs[SPLIT] == "train"].copy()
    data = pcc.CellData.from_anndata(train, label_key=LABEL, domain_key=BATCH)
    cells = pcc.CellData.from_anndata(adata, schema=data.schema, unknown=["label", "domain"])
    torch.manual_seed(seed)
    sampler = None
    if name == "InVAE":
        model = pcc.InVAE(data.schema, n_latent_inv=n_latent, n_latent_spur=2)
        sampler = pcc.BalancedSampler(["label", "domain"])  # the recipe in docs/invae.rst
    else:
        model = pcc.VAE(data.schema, n_latent=n_latent, use_domain=False)
    history = pcc.fit(model, data, max_epochs=epochs, batch_size=256, lr=3e-3,
                      validation_fraction=0.0, seed=seed, progress=False, sampler=sampler)
    return {"latent": pcc.latent(model, cells), "epoch_seconds": history.seconds / epochs}


def run_external(script: str, python: str, adata: ad.AnnData, epochs: int, seed: int,
                 n_latent: int, workdir: Path) -> dict:
    path, output = workdir / "input.h5ad", workdir / f"{script}.npz"
    adata.write_h5ad(path)
    sizes = (["--n-latent-inv", str(n_latent), "--n-latent-spur", "2"] if script == "run_invae"
             else ["--n-latent", str(n_latent)])
    command = [python, str(HERE / "external" / f"{script}.py"), "--input", str(path),
               "--label-key", LABEL, "--batch-key", BATCH, "--epochs", str(epochs),
               "--batch-size", "256", "--seed", str(seed), "--output", str(output), *sizes]
    subprocess.run(command, check=True)
    result = np.load(output, allow_pickle=True)
    out = {"latent": result["latent"], "epoch_seconds": float(result["epoch_seconds"])}
    if "test_predictions" in result:
        out["own_predictions"] = result["test_predictions"]
    return out


# -------------------------------------------------------------------------------- scores
def linear_accuracy(latent: np.ndarray, labels: np.ndarray, test: np.ndarray,
                    seed: int) -> float:
    classes, codes = np.unique(labels[~test], return_inverse=True)
    mean, sd = latent[~test].mean(0), latent[~test].std(0) + 1e-8
    features = torch.as_tensor((latent - mean) / sd, dtype=torch.float32)
    network = train_classifier(features[torch.as_tensor(~test)], torch.as_tensor(codes),
                               len(classes), seed=seed)
    with torch.no_grad():
        predicted = classes[network(features[torch.as_tensor(test)]).argmax(-1).numpy()]
    return float(np.mean(predicted == labels[test]))


def scores(dataset: str, adata: ad.AnnData, result: dict, seed: int) -> dict:
    latent = np.asarray(result["latent"], dtype=np.float64)
    test = (adata.obs[SPLIT] == "test").to_numpy()
    labels, batches = adata.obs[LABEL].to_numpy(), adata.obs[BATCH].to_numpy()
    row = {"accuracy_held_out": linear_accuracy(latent, labels, test, seed),
           "epoch_seconds": result["epoch_seconds"]}
    if "own_predictions" in result:
        row["accuracy_own_classifier"] = float(np.mean(
            np.asarray(result["own_predictions"]).astype(str) == labels[test]))
    if dataset == "simulation":
        row["mcc_inv"] = mean_correlation_coefficient(adata.obsm["z_inv"][test], latent[test])
        cells = test  # label and batch independent there
    else:
        cells = np.ones(len(test), dtype=bool)
    row["label_silhouette"] = label_silhouette(latent[cells], labels[cells])
    row["batch_mixing"] = batch_mixing(latent[cells], batches[cells])
    return row


def markdown_table(table: pd.DataFrame) -> str:
    lines = ["| " + " | ".join(table.columns) + " |", "|" + "---|" * len(table.columns)]
    lines += ["| " + " | ".join("" if pd.isna(v) else str(v) for v in row) + " |"
              for row in table.itertuples(index=False)]
    return "\n".join(lines)


def main(argv=None) -> pd.DataFrame:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS), choices=list(DATASETS))
    parser.add_argument("--invae-python", help="Python of the invae package's environment")
    parser.add_argument("--scvi-python", help="Python of the scvi-tools environment")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--n-latent", type=int, default=10)
    parser.add_argument("--epochs-scale", type=float, default=1.0,
                        help="multiply every data set's epochs (0.1 for a quick check)")
    parser.add_argument("--out", type=Path, default=Path("bench_invae"))
    parser.add_argument("--device", default="auto",
                        help="where our models train: auto, cpu, cuda (sets "
                        "$CAUSALCELL_DEVICE, which device='auto' follows)")
    args = parser.parse_args(argv)
    os.environ["CAUSALCELL_DEVICE"] = args.device
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)
    rows = []
    for dataset in args.datasets:
        adata = DATASETS[dataset](args.seed)
        epochs = max(1, round(EPOCHS[dataset] * args.epochs_scale))
        n_latent = 4 if dataset == "simulation" else args.n_latent
        print(f"{dataset}: {adata.n_obs} cells x {adata.n_vars} genes, "
              f"{int((adata.obs[SPLIT] == 'test').sum())} test cells, {epochs} epochs",
              flush=True)
        methods = {"InVAE": lambda: run_ours("InVAE", adata, epochs, args.seed, n_latent),
                   "VAE": lambda: run_ours("VAE", adata, epochs, args.seed, n_latent)}
        if args.invae_python:
            methods["invae package"] = lambda: run_external(
                "run_invae", args.invae_python, adata, epochs, args.seed, n_latent, args.out)
        if args.scvi_python:
            methods["SCVI"] = lambda: run_external(
                "run_scvi", args.scvi_python, adata, epochs, args.seed, n_latent, args.out)
        for method, run in methods.items():
            start = time.perf_counter()
            result = run()
            row = {"dataset": dataset, "method": method, "epochs": epochs,
                   **scores(dataset, adata, result, args.seed),
                   "total_seconds": time.perf_counter() - start}
            rows.append(row)
            print(json.dumps(row), flush=True)
    table = pd.DataFrame(rows)
    reference = table[table["method"] == "invae package"].set_index("dataset")["epoch_seconds"]
    table["epoch_time_vs_invae"] = table["epoch_seconds"] / table["dataset"].map(reference)
    table.to_csv(args.out / "results.csv", index=False)
    markdown = markdown_table(table.round(3))
    (args.out / "results.md").write_text(markdown + "\n")
    print(markdown)
    return table


if __name__ == "__main__":
    main()
