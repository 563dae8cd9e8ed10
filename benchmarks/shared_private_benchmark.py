"""multiGroupVI on IFN-beta stimulation and the HSIC-constrained VAE on three 10x chemistries.

One run, one seed (0):

* ``kang``: ``kang2018_ifnb_muscat_example.h5ad`` (1,556 PBMCs x 1,267 genes), groups = the
  condition (ctrl / stim). The 20 genes the stim-private block explains best
  (``MultiGroupVI.group_specific_scores``) and how many are known interferon-stimulated genes;
  label silhouette (cell type) and condition mixing of the shared block, next to a VAE's latent;
* ``pbmc``: ``pbmc_3x10xchem_savercat.h5ad`` (2,000 most variable genes), nuisance = the
  chemistry: HSICVAE vs VAE (both with the chemistry in encoder and decoder, scVI-style) vs
  scvi-tools' SCVI (``benchmarks/external/run_scvi.py`` in its own environment, every cell
  trained on): HSIC between latent and chemistry (1,000-cell subsample, median-heuristic
  kernels), batch mixing, cell-type silhouette, our models' final training ELBO per cell, and
  epoch time as a ratio to our VAE.

    python benchmarks/shared_private_benchmark.py --out bench_shared_private \\
        --scvi-python /work/bench_envs/scvi/bin/python       # about 5 minutes on 2 CPU cores
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from invae_benchmark import (  # noqa: E402  (the shared pieces of the benchmarks)
    BATCH, LABEL, SPLIT, data_dir, markdown_table, most_variable_genes, run_external)

import pyro_causalcell as pcc  # noqa: E402
from pyro_causalcell.metrics import batch_mixing, hsic, label_silhouette  # noqa: E402

#: interferon-stimulated genes (Schoggins 2011 / MSigDB hallmark interferon-alpha response)
ISGS = {"ISG15", "IFIT1", "IFIT2", "IFIT3", "IFIT5", "MX1", "MX2", "OAS1", "OAS2", "OAS3",
        "OASL", "IFI6", "IFI27", "IFI35", "IFI44", "IFI44L", "IFITM1", "IFITM2", "IFITM3",
        "LY6E", "ISG20", "RSAD2", "HERC5", "HERC6", "XAF1", "STAT1", "STAT2", "IRF7", "IRF9",
        "BST2", "EPSTI1", "SAMD9L", "PLSCR1", "IFI16", "IFIH1", "DDX58", "DDX60", "GBP1",
        "CXCL10", "CXCL11", "TNFSF10", "SOCS1", "APOBEC3A", "CMPK2", "USP18", "SP110",
        "PARP9", "PARP14", "DTX3L", "TRIM22", "LGALS3BP", "CCL8", "EIF2AK2", "LAP3", "SAT1"}


def kang(seed: int, epochs: int) -> tuple[pd.DataFrame, list[str]]:
    adata = ad.read_h5ad(data_dir() / "kang2018_ifnb_muscat_example.h5ad")
    data = pcc.CellData.from_anndata(adata, domain_key="condition")
    cell_types = adata.obs["cell_type"].astype(str).to_numpy()
    condition = adata.obs["condition"].astype(str).to_numpy()
    rows = []
    torch.manual_seed(seed)
    model = pcc.MultiGroupVI(data.schema, n_latent_shared=10, n_latent_private=5)
    history = pcc.fit(model, data, max_epochs=epochs, batch_size=256, lr=3e-3, seed=seed,
                      validation_fraction=0.0, progress=False)
    top = list(model.group_specific_scores(data)["stim"].nlargest(20).index)
    shared = pcc.latent(model, data, site="z_shared")
    rows.append({"model": "MultiGroupVI (z_shared)",
                 "isgs_in_top20": sum(g.split("_")[0] in ISGS for g in top),
                 "label_silhouette": label_silhouette(shared, cell_types),
                 "condition_mixing": batch_mixing(shared, condition),
                 "epoch_seconds": history.seconds / epochs})
    torch.manual_seed(seed)
    vae = pcc.VAE(data.schema, n_latent=10, use_domain=False)
    history = pcc.fit(vae, data, max_epochs=epochs, batch_size=256, lr=3e-3, seed=seed,
                      validation_fraction=0.0, progress=False)
    z = pcc.latent(vae, data)
    rows.append({"model": "VAE", "label_silhouette": label_silhouette(z, cell_types),
                 "condition_mixing": batch_mixing(z, condition),
                 "epoch_seconds": history.seconds / epochs})
    return pd.DataFrame(rows), top


def pbmc(seed: int, epochs: int, scvi_python: str | None, workdir: Path) -> pd.DataFrame:
    adata = ad.read_h5ad(data_dir() / "pbmc_3x10xchem_savercat.h5ad")
    adata = adata[:, most_variable_genes(sp.csr_matrix(adata.X), 2000)].copy()
    adata = adata[:, np.asarray(adata.X.sum(0)).ravel() > 0].copy()
    data = pcc.CellData.from_anndata(adata, domain_key="tech", label_key="celltype")
    cell_types = adata.obs["celltype"].astype(str).to_numpy()
    tech = adata.obs["tech"].astype(str).to_numpy()
    subsample = np.random.default_rng(seed).choice(adata.n_obs, 1000, replace=False)
    rows = []
    for name, make in [("VAE", lambda: pcc.VAE(data.schema, n_latent=10)),
                       ("HSICVAE", lambda: pcc.HSICVAE(data.schema, n_latent=10))]:
        torch.manual_seed(seed)
        model = make()
        history = pcc.fit(model, data, max_epochs=epochs, batch_size=256, lr=3e-3, seed=seed,
                          validation_fraction=0.0, progress=False)
        rows.append({"model": name, "latent": pcc.latent(model, data),
                     "train_elbo": history.train_elbo[-1],
                     "epoch_seconds": history.seconds / epochs})
    if scvi_python:
        external = ad.AnnData(sp.csr_matrix(adata.X).astype(np.int64),
                              obs=pd.DataFrame({LABEL: cell_types, BATCH: tech,
                                                SPLIT: "train"}, index=adata.obs_names))
        result = run_external("run_scvi", scvi_python, external, epochs, seed, 10, workdir)
        rows.append({"model": "SCVI", "latent": result["latent"],
                     "epoch_seconds": result["epoch_seconds"]})
    for row in rows:
        z = np.asarray(row.pop("latent"), dtype=np.float64)
        row.update(hsic_tech=hsic(z[subsample], tech[subsample]),
                   batch_mixing=batch_mixing(z, tech),
                   label_silhouette=label_silhouette(z, cell_types))
    table = pd.DataFrame(rows)
    table["epoch_time_vs_vae"] = table["epoch_seconds"] / table.loc[0, "epoch_seconds"]
    return table


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--scvi-python", help="Python of the scvi-tools environment")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--kang-epochs", type=int, default=100)
    parser.add_argument("--pbmc-epochs", type=int, default=200)
    parser.add_argument("--out", type=Path, default=Path("bench_shared_private"))
    parser.add_argument("--device", default="auto",
                        help="where our models train: auto, cpu, cuda (sets "
                        "$CAUSALCELL_DEVICE, which device='auto' follows)")
    args = parser.parse_args(argv)
    os.environ["CAUSALCELL_DEVICE"] = args.device
    args.out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(os.cpu_count() or 1)
    kang_table, top = kang(args.seed, args.kang_epochs)
    pbmc_table = pbmc(args.seed, args.pbmc_epochs, args.scvi_python, args.out)
    report = ("## Kang IFN-beta, condition as groups\n\n" + markdown_table(kang_table.round(3))
              + f"\n\nTop 20 stim-specific genes: {', '.join(top)}\n\n"
              + "## PBMC, chemistry as nuisance\n\n" + markdown_table(pbmc_table.round(4)) + "\n")
    (args.out / "results.md").write_text(report)
    print(report)


if __name__ == "__main__":
    main()
