"""FCR on Kang 2018 IFN-beta: each cell type's stimulated cells held out in turn and predicted as
counterfactuals of that type's control cells, against iVAE, sVAE+, the naive baseline and CPA.

Data: ``kang2018_ifnb_muscat_example.h5ad`` (1,556 PBMCs x 1,267 genes, 5 cell types, ctrl /
stim), read from ``$CAUSALCELL_DATA_DIR`` or ``../shared/data`` beside the repository.

Protocol, one run, one seed, the same split for every method. For each cell type ``c``:

1. training cells = every cell but the stimulated cells of ``c`` (x = cell type, the domain;
   t = the condition, control ``ctrl``);
2. predictions of the held-out cells from the control cells of ``c``:
   FCR and FCR without its permutation discriminators (``do(perturbation="stim")``), iVAE and
   sVAE+ (``SparseShiftVAE`` as in ``kang_heldout_response.py``), the naive baseline (the
   controls plus the mean log-normalised stimulation shift of the other types) and, with
   ``--cpa-python``, CPA (``cpa-tools`` in its own environment, ``external/run_cpa.py``);
   model counterfactuals are counts drawn at each control cell's library size (one per cell);
3. scores on log-normalised expression (``log1p`` of counts per 10,000): R^2 of the mean over
   all genes and over the top 50 DE genes (control vs observed stimulated), and the energy
   distance between predicted and observed cells;
4. for FCR (with and without discriminators) on its training cells: the NMI of k-means
   clusters of each block with the cell type, the condition and their combination (the
   study's clustering table), and kernel conditional-independence p-values on posterior
   samples (800 cells, 200 permutations): z_x indep. t | x, z_t indep. x | t,
   z_tx indep. z_x | (x, t), z_tx indep. z_t | (x, t).

    python benchmarks/fcr_benchmark.py --out bench_fcr \\
        --cpa-python /work/bench_envs/cpa/bin/python     # about 25 minutes on 2 CPU cores

Writes ``response.csv``, ``blocks.csv`` and ``independence.csv`` under ``--out`` and prints
the tables (means over the held-out types, and per type).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from kang_heldout_response import (held_out_folds, read_kang, run_external,  # noqa: E402
                                   scores)

BLOCKS = ("z_x", "z_t", "z_tx")


def fit_fcr(data, args, discriminator_weight: float | None):
    from pyro_causalcell import FCR, fit

    torch.manual_seed(args.seed)
    options = {} if discriminator_weight is None else {"discriminator_weight":
                                                       discriminator_weight}
    model = FCR(data.schema, n_latent_x=args.n_latent, n_latent_t=args.n_latent,
                n_latent_tx=args.n_latent, **options)
    start = time.perf_counter()
    fit(model, data, max_epochs=args.epochs, kl_warmup_epochs=args.epochs // 5, lr=3e-3,
        batch_size=256, seed=args.seed, progress=False)
    return model, time.perf_counter() - start


def fit_sparse_shift(data, args, sparsity: str):
    from pyro_causalcell import SparseShiftVAE, fit

    torch.manual_seed(args.seed)
    model = SparseShiftVAE(data.schema, n_latent=args.n_latent, sparsity=sparsity,
                           sparsity_weight=20.0, use_domain=False)
    start = time.perf_counter()
    fit(model, data, max_epochs=args.epochs, kl_warmup_epochs=args.epochs // 5, lr=3e-3,
        seed=args.seed, progress=False)
    return model, time.perf_counter() - start


def block_structure(model, train: ad.AnnData, data, seed: int) -> tuple[dict, dict]:
    """NMI of each block's k-means clusters with x, t, x-by-t; CI-test p-values."""
    from pyro_causalcell import latent
    from pyro_causalcell.metrics import (conditional_independence_test, kmeans,
                                         normalized_mutual_information)

    x = train.obs["cell_type"].astype(str).to_numpy()
    t = train.obs["condition"].astype(str).to_numpy()
    xt = np.char.add(np.char.add(x, "|"), t)
    nmi = {}
    for site in BLOCKS:
        z = latent(model, data, site=site)
        for name, labels in [("x", x), ("t", t), ("x*t", xt)]:
            clusters = kmeans(z, len(np.unique(labels)), seed=seed)[0]
            nmi[f"{site} ~ {name}"] = normalized_mutual_information(clusters, labels)
    torch.manual_seed(seed)
    with torch.no_grad():
        model.eval()
        samples = {k: v.cpu().numpy() for k, v in
                   model.guide(data.batch(torch.arange(data.n_cells))).items()}
    cells = np.random.default_rng(seed).choice(len(x), min(800, len(x)), replace=False)

    def pvalue(z, other, given):
        return conditional_independence_test(z[cells], other[cells], given[cells],
                                             n_permutations=200, seed=seed).pvalue

    tests = {"z_x indep t given x": pvalue(samples["z_x"], t, x),
             "z_t indep x given t": pvalue(samples["z_t"], x, t),
             "z_tx indep z_x given x,t": pvalue(samples["z_tx"], samples["z_x"], xt),
             "z_tx indep z_t given x,t": pvalue(samples["z_tx"], samples["z_t"], xt)}
    return nmi, tests


def markdown(table: pd.DataFrame) -> str:
    """A markdown table of ``table`` (index as the first column), without extra packages."""
    lines = ["| | " + " | ".join(map(str, table.columns)) + " |",
             "|---|" + "---:|" * len(table.columns)]
    for name, row in table.iterrows():
        lines.append(f"| {name} | " + " | ".join(
            f"{v:.3f}" if isinstance(v, float) else str(v) for v in row) + " |")
    return "\n".join(lines)


RESPONSE_COLUMNS = ["r2_all_genes", "r2_top50_de", "energy_distance", "fit_seconds"]


def print_response_summary(response: pd.DataFrame) -> None:
    """Print each prediction's scores as mean [min, max] over the held-out types, then R^2 on
    the top-50 DE genes per type (``response``: one row per type and prediction)."""
    order = list(dict.fromkeys(response["prediction"]))
    print("\nheld-out stimulated cells, mean [min, max] over the held-out types\n")
    summary = response.groupby("prediction", sort=False)[RESPONSE_COLUMNS].agg(
        ["mean", "min", "max"])
    print("| prediction | " + " | ".join(RESPONSE_COLUMNS) + " |")
    print("|---|" + "---:|" * len(RESPONSE_COLUMNS))
    for name in order:
        cells = []
        for column in RESPONSE_COLUMNS:
            mean, low, high = summary.loc[name, column]
            cells.append("—" if np.isnan(mean) else f"{mean:.3f} [{low:.3f}, {high:.3f}]")
        print(f"| {name} | " + " | ".join(cells) + " |")
    print("\nper held-out type, R^2 on the top-50 DE genes\n")
    print(markdown(response.pivot(index="prediction", columns="cell_type",
                                  values="r2_top50_de").loc[order]))


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cell-types", default=None,
                        help="comma-separated cell types to hold out (default: all)")
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--n-latent", type=int, default=8, help="per FCR block; the VAEs' size")
    parser.add_argument("--cpa-python", help="python of the cpa-tools environment")
    parser.add_argument("--cpa-epochs", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="auto",
                        help="where our models train: auto, cpu, cuda (sets "
                        "$CAUSALCELL_DEVICE, which device='auto' follows)")
    args = parser.parse_args(argv)
    os.environ["CAUSALCELL_DEVICE"] = args.device

    from pyro_causalcell import counterfactual
    from pyro_causalcell.plotting import log_normalise

    adata = read_kang()
    response, blocks, independence = [], [], []
    for fold in held_out_folds(adata, args.cell_types):
        cell_type, data, source, train = fold.cell_type, fold.data, fold.source, fold.train
        observed, control, rows = fold.observed, fold.control, fold.rows
        fitted = {"FCR": lambda: fit_fcr(data, args, None),
                  "FCR, no discriminators": lambda: fit_fcr(data, args, 0.0),
                  "iVAE": lambda: fit_sparse_shift(data, args, "ivae"),
                  "sVAE+": lambda: fit_sparse_shift(data, args, "svae+")}
        for name, make in fitted.items():
            model, seconds = make()
            predicted = counterfactual(model, source, {"perturbation": "stim"}, n_samples=1,
                                       output="counts", seed=args.seed)
            rows[name] = {**scores(log_normalise(predicted.X.astype(float)), observed, control),
                          "fit_seconds": seconds}
            if name.startswith("FCR"):
                nmi, tests = block_structure(model, train, data, args.seed)
                blocks.append({"cell_type": cell_type, "model": name, **nmi})
                independence.append({"cell_type": cell_type, "model": name, **tests})
            print(f"  {name}: {seconds:.0f} s, R^2 top-50 {rows[name]['r2_top50_de']:.3f}",
                  flush=True)
        if args.cpa_python:
            predicted, names, seconds = run_external("run_cpa.py", args.cpa_python,
                                                     args.cpa_epochs, adata, fold.held_out,
                                                     cell_type, args.seed)
            order = pd.Index(names).get_indexer(source.obs_names)
            rows["CPA (cpa-tools)"] = {**scores(predicted[order], observed, control),
                                       "fit_seconds": seconds}
            print(f"  CPA: {seconds:.0f} s, R^2 top-50 "
                  f"{rows['CPA (cpa-tools)']['r2_top50_de']:.3f}", flush=True)
        for name, row in rows.items():
            response.append({"cell_type": cell_type, "prediction": name, **row})

    args.out.mkdir(parents=True, exist_ok=True)
    response, blocks, independence = (pd.DataFrame(response), pd.DataFrame(blocks),
                                      pd.DataFrame(independence))
    response.to_csv(args.out / "response.csv", index=False)
    blocks.to_csv(args.out / "blocks.csv", index=False)
    independence.to_csv(args.out / "independence.csv", index=False)
    print_response_summary(response)
    print("\nFCR blocks: NMI of k-means clusters with x (cell type), t (condition), x*t; "
          "mean over folds\n")
    print(markdown(blocks.groupby("model", sort=False).mean(numeric_only=True).T))
    print("\nconditional-independence p-values (posterior samples; median [min, max] over "
          "folds)\n")
    stats = (independence.drop(columns="cell_type").groupby("model", sort=False)
             .agg(["median", "min", "max"]))
    table = {model: {test: f"{stats.loc[model, (test, 'median')]:.3f} "
                           f"[{stats.loc[model, (test, 'min')]:.3f}, "
                           f"{stats.loc[model, (test, 'max')]:.3f}]"
                     for test in independence.columns[2:]}
             for model in stats.index}
    print(markdown(pd.DataFrame(table)))


if __name__ == "__main__":
    main()
