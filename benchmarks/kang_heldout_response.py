"""Held-out cell-type response to IFN-beta as a counterfactual (Kang 2018; the scGen task).

Data: ``kang2018_ifnb_muscat_example.h5ad`` (1,556 PBMCs x 1,267 genes; ``obs["condition"]``
ctrl / stim, ``obs["cell_type"]``, 5 types), read from ``$CAUSALCELL_DATA_DIR`` or
``../shared/data`` beside the repository.

Protocol, in one run with one seed:

1. hold out the stimulated cells of one cell type (default ``CD14+ Monocytes``) and fit on
   everything else, with the condition as the perturbation (control ``ctrl``); the latents
   carry the cell type (``--use-domain`` also feeds it to encoder and decoder as a covariate);
2. predict the held-out cells as the counterfactual of that type's control cells under
   ``do(perturbation="stim")`` (counts sampled from the likelihood at each control cell's
   library size, one draw per cell);
3. compare with the observed stimulated cells of that type on log-normalised expression
   (``log1p`` of counts per 10,000): R^2 of mean expression over all genes and over the top 50
   DE genes (control vs observed stimulated), and the energy distance between the populations;
4. the same scores for a naive baseline computed in the run: the type's control cells plus the
   average stimulation shift (log-normalised) of the other cell types, and for the control
   cells themselves (no response at all).

    python benchmarks/kang_heldout_response.py               # about 2 minutes on 2 CPU cores
    python benchmarks/kang_heldout_response.py --cell-type "CD4 T cells" --models ivae

Prints a markdown table and, with ``--out DIR``, writes it as CSV with a counterfactual-vs-
observed figure of the first model.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from pathlib import Path

import anndata as ad
import numpy as np
import scipy.sparse as sp
import torch

FILE = "kang2018_ifnb_muscat_example.h5ad"


def data_dir() -> Path:
    default = Path(__file__).resolve().parents[1].parent / "shared" / "data"
    return Path(os.environ.get("CAUSALCELL_DATA_DIR", default))


def read_kang() -> ad.AnnData:
    """The Kang data set, or a named exit when it is not where ``data_dir()`` says."""
    path = data_dir() / FILE
    if not path.exists():
        raise SystemExit(f"{path} not found; set CAUSALCELL_DATA_DIR to the folder holding {FILE}")
    return ad.read_h5ad(path)


def dense(x) -> np.ndarray:
    return x.toarray() if sp.issparse(x) else np.asarray(x)


def scores(predicted: np.ndarray, observed: np.ndarray, control: np.ndarray) -> dict:
    from pyro_causalcell.metrics import energy_distance, response_r2

    r2 = response_r2(predicted, observed, control, top_k=50)
    return {"r2_all_genes": r2.all_genes, "r2_top50_de": r2.top_genes,
            "energy_distance": energy_distance(predicted, observed)}


def naive_baseline(adata: ad.AnnData, cell_type: str, logged: np.ndarray) -> np.ndarray:
    """The held-out type's control cells plus the mean stimulation shift of the other types."""
    obs = adata.obs
    shifts = []
    for other in obs["cell_type"].unique():
        if other == cell_type:
            continue
        is_type = (obs["cell_type"] == other).to_numpy()
        stim = logged[is_type & (obs["condition"] == "stim").to_numpy()].mean(0)
        ctrl = logged[is_type & (obs["condition"] == "ctrl").to_numpy()].mean(0)
        shifts.append(stim - ctrl)
    control = logged[((obs["cell_type"] == cell_type) & (obs["condition"] == "ctrl")).to_numpy()]
    return control + np.mean(shifts, axis=0)


def run_external(script: str, python: str, epochs: int, adata: ad.AnnData,
                 held_out: np.ndarray, cell_type: str,
                 seed: int) -> tuple[np.ndarray, np.ndarray, float]:
    """A published package's prediction (log-normalised) of the type's control cells, run in
    its own virtual environment by ``external/<script>``."""
    runner = Path(__file__).resolve().parent / "external" / script
    with tempfile.TemporaryDirectory() as folder:
        path, output = Path(folder) / "input.h5ad", Path(folder) / "result.npz"
        copy = adata.copy()
        copy.obs["split"] = np.where(held_out, "held_out", "train")
        copy.write_h5ad(path)
        command = [python, str(runner), "--input", str(path), "--perturbation-key",
                   "condition", "--control", "ctrl", "--covariate-key", "cell_type",
                   "--held-out-type", cell_type, "--epochs", str(epochs), "--seed",
                   str(seed), "--output", str(output), "--threads", "2"]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
        result = np.load(output, allow_pickle=False)
        return result["predicted"], result["obs_names"], float(result["train_seconds"])


def held_out_folds(adata: ad.AnnData, cell_types: str | None):
    """One fold per held-out cell type (``cell_types``: comma-separated, default all): yields
    ``SimpleNamespace(cell_type, held_out, train, source, observed, control, data, rows)``,
    ``held_out`` the mask of its stimulated cells, ``train`` every other cell, ``source`` its
    control cells, ``observed`` / ``control`` their log-normalised expression, ``data`` the
    training cells encoded (condition = perturbation, cell type = domain) and ``rows`` the
    scores of the two references (the controls themselves and the naive baseline)."""
    from types import SimpleNamespace

    from pyro_causalcell import CellData
    from pyro_causalcell.plotting import log_normalise

    obs = adata.obs
    types = (sorted(obs["cell_type"].unique()) if cell_types is None
             else [c.strip() for c in cell_types.split(",")])
    logged = log_normalise(dense(adata.X).astype(float))
    for cell_type in types:
        is_type = (obs["cell_type"] == cell_type).to_numpy()
        is_stim = (obs["condition"] == "stim").to_numpy()
        held_out = is_type & is_stim
        train = adata[~held_out].copy()
        observed, control = logged[held_out], logged[is_type & ~is_stim]
        data = CellData.from_anndata(train, perturbation_key="condition", control="ctrl",
                                     domain_key="cell_type")
        rows = {"control cells (no response)": scores(control, observed, control),
                "naive baseline": scores(naive_baseline(adata, cell_type, logged), observed,
                                         control)}
        print(f"{cell_type}: {held_out.sum()} held out, {(is_type & ~is_stim).sum()} controls",
              flush=True)
        yield SimpleNamespace(cell_type=cell_type, held_out=held_out, train=train,
                              source=adata[is_type & ~is_stim].copy(), observed=observed,
                              control=control, data=data, rows=rows)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cell-type", default="CD14+ Monocytes")
    parser.add_argument("--models", default="ivae,svae+",
                        help="comma-separated SparseShiftVAE sparsity values")
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--n-latent", type=int, default=10)
    parser.add_argument("--sparsity-weight", type=float, default=20.0)
    parser.add_argument("--use-domain", action=argparse.BooleanOptionalAction, default=False,
                        help="also give the cell type to encoder and decoder (default: no; the "
                             "latents then carry cell type and the decoder's nonlinearity makes "
                             "the response cell-type specific, which predicted better here)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, help="folder for table.csv and a figure")
    parser.add_argument("--device", default="auto",
                        help="where our models train: auto, cpu, cuda (sets "
                        "$CAUSALCELL_DEVICE, which device='auto' follows)")
    args = parser.parse_args(argv)
    os.environ["CAUSALCELL_DEVICE"] = args.device

    from pyro_causalcell import CellData, SparseShiftVAE, counterfactual, fit
    from pyro_causalcell.plotting import log_normalise, plot_counterfactual

    adata = read_kang()
    obs = adata.obs
    if args.cell_type not in set(obs["cell_type"]):
        raise SystemExit(f"--cell-type {args.cell_type!r} is not in obs['cell_type']: "
                         f"{sorted(set(obs['cell_type']))}")
    is_type = (obs["cell_type"] == args.cell_type).to_numpy()
    is_stim = (obs["condition"] == "stim").to_numpy()
    held_out = is_type & is_stim
    train = adata[~held_out].copy()
    source = adata[is_type & ~is_stim].copy()
    observed = adata[held_out]
    print(f"{FILE}: {adata.n_obs} cells x {adata.n_vars} genes; held out {held_out.sum()} "
          f"stimulated {args.cell_type}; counterfactuals of its {source.n_obs} control cells")

    logged = log_normalise(dense(adata.X).astype(float))
    observed_logged = logged[held_out]
    control_logged = logged[is_type & ~is_stim]
    rows = {"control cells (no response)": scores(control_logged, observed_logged,
                                                  control_logged),
            "naive baseline": scores(naive_baseline(adata, args.cell_type, logged),
                                     observed_logged, control_logged)}
    data = CellData.from_anndata(train, perturbation_key="condition", control="ctrl",
                                 domain_key="cell_type")
    figure_data = None
    for sparsity in [m.strip() for m in args.models.split(",") if m.strip()]:
        torch.manual_seed(args.seed)
        model = SparseShiftVAE(data.schema, n_latent=args.n_latent, sparsity=sparsity,
                               sparsity_weight=args.sparsity_weight,
                               use_domain=args.use_domain)
        start = time.perf_counter()
        fit(model, data, max_epochs=args.epochs, kl_warmup_epochs=args.epochs // 5, lr=3e-3,
            seed=args.seed, progress=False)
        seconds = time.perf_counter() - start
        predicted = counterfactual(model, source, {"perturbation": "stim"}, n_samples=1,
                                   output="counts", seed=args.seed)
        row = scores(log_normalise(predicted.X.astype(float)), observed_logged, control_logged)
        row["fit_seconds"] = seconds
        rows[f"{sparsity} counterfactual"] = row
        figure_data = figure_data or (predicted, sparsity)
        print(f"  {sparsity}: fitted in {seconds:.0f} s")

    columns = ["r2_all_genes", "r2_top50_de", "energy_distance", "fit_seconds"]
    print(f"\nheld-out stimulated {args.cell_type} (log-normalised expression)\n")
    print("| prediction | " + " | ".join(columns) + " |")
    print("|---|" + "---:|" * len(columns))
    for name, row in rows.items():
        cells = [f"{row[c]:.3f}" if c in row else "—" for c in columns]
        print(f"| {name} | " + " | ".join(cells) + " |")
    if args.out:
        import matplotlib
        matplotlib.use("Agg")
        import pandas as pd

        args.out.mkdir(parents=True, exist_ok=True)
        pd.DataFrame(rows).T.to_csv(args.out / "table.csv")
        predicted, sparsity = figure_data
        figure = plot_counterfactual(source, predicted, observed,
                                     labels=("control", f"{sparsity} counterfactual",
                                             "observed stim"),
                                     title=f"{args.cell_type}: IFN-beta, held out")
        figure.savefig(args.out / "counterfactual.png", dpi=120)
        print(f"wrote {args.out}/table.csv and counterfactual.png")


if __name__ == "__main__":
    main()
