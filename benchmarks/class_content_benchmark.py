"""Held-out IFN-beta responses on Kang 2018 by class swapping and latent arithmetic: LORD,
beta-VAE latent arithmetic, iVAE's counterfactual, scGen and biolord, the naive baseline.

Data: ``kang2018_ifnb_muscat_example.h5ad`` (1,556 PBMCs x 1,267 genes, 5 cell types, ctrl /
stim), read from ``$CAUSALCELL_DATA_DIR`` or ``../shared/data`` beside the repository.

Protocol, one run, one seed, the same split for every method. For each cell type ``c``:

1. training cells = every cell but the stimulated cells of ``c`` (the condition is the
   perturbation, control ``ctrl``; the cell type is the domain);
2. predictions of the held-out cells from the control cells of ``c``:

   * **LORD** (class = the condition; stage one on every training cell, then the content
     encoder): ``counterfactual(do={"perturbation": "stim"})``, the class swapped to stim;
   * **beta-VAE latent arithmetic**, beta 1 and 4 (``VAE(use_domain=False)``, so the latent
     carries cell type and condition, as scGen's): ``latent_arithmetic`` with the shift
     averaged over the cell types that have both conditions (scGen's balancing);
   * **iVAE** (``SparseShiftVAE(sparsity="ivae")``, the best existing model on this task in
     ``fcr_benchmark.py``): ``counterfactual(do={"perturbation": "stim"})``;
   * **scGen** and **biolord** in their own environments (``--scgen-python``,
     ``--biolord-python``; ``external/run_scgen.py``, ``external/run_biolord.py``);
   * the naive baseline (the controls plus the mean log-normalised shift of the other types);

   our models' predictions are counts drawn at each control cell's library size (one per cell);
3. scores on log-normalised expression (``log1p`` of counts per 10,000): R^2 of the mean over
   all genes and over the top 50 DE genes (control vs observed stimulated), and the energy
   distance between predicted and observed cells.

    python benchmarks/class_content_benchmark.py --out bench_class_content \\
        --scgen-python /work/bench_envs/scgen/bin/python \\
        --biolord-python /work/bench_envs/biolord/bin/python

Writes ``response.csv`` under ``--out`` and prints the table (mean [min, max] over the held-out
types, and R^2 on the top-50 DE genes per type).
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from fcr_benchmark import fit_sparse_shift, print_response_summary  # noqa: E402
from kang_heldout_response import (held_out_folds, read_kang, run_external,  # noqa: E402
                                   scores)

def fit_lord(data, args):
    from pyro_causalcell import LORD, fit

    torch.manual_seed(args.seed)
    model = LORD(data.schema, n_latent_class=args.n_latent, n_latent_content=2 * args.n_latent,
                 class_key="perturbation")
    start = time.perf_counter()
    fit(model, data, max_epochs=args.epochs, lr=3e-2, validation_fraction=0.0, seed=args.seed,
        progress=False)
    fit(model, data, max_epochs=args.epochs // 2, lr=3e-3, seed=args.seed, progress=False,
        parameters=model.start_stage_two())
    return model, time.perf_counter() - start


def fit_beta_vae(data, args, beta: float):
    from pyro_causalcell import VAE, fit

    torch.manual_seed(args.seed)
    model = VAE(data.schema, n_latent=args.n_latent, beta=beta, use_domain=False)
    start = time.perf_counter()
    fit(model, data, max_epochs=args.epochs, kl_warmup_epochs=args.epochs // 5, lr=3e-3,
        seed=args.seed, progress=False)
    return model, time.perf_counter() - start


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cell-types", default=None,
                        help="comma-separated cell types to hold out (default: all)")
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--n-latent", type=int, default=10,
                        help="the VAEs' latent size; LORD's class embedding (content: twice)")
    parser.add_argument("--scgen-python", help="python of the scgen environment")
    parser.add_argument("--biolord-python", help="python of the biolord environment")
    parser.add_argument("--scgen-epochs", type=int, default=100, help="scGen's tutorial: 100")
    parser.add_argument("--biolord-epochs", type=int, default=100)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--device", default="auto",
                        help="where our models train: auto, cpu, cuda (sets "
                        "$CAUSALCELL_DEVICE, which device='auto' follows)")
    args = parser.parse_args(argv)
    os.environ["CAUSALCELL_DEVICE"] = args.device

    from pyro_causalcell import counterfactual, latent_arithmetic
    from pyro_causalcell.plotting import log_normalise

    adata = read_kang()
    externals = {"scGen (scgen)": ("run_scgen.py", args.scgen_python, args.scgen_epochs),
                 "biolord (biolord)": ("run_biolord.py", args.biolord_python,
                                       args.biolord_epochs)}
    response = []
    for fold in held_out_folds(adata, args.cell_types):
        cell_type, data, source = fold.cell_type, fold.data, fold.source
        observed, control, rows = fold.observed, fold.control, fold.rows
        counterfactuals = {"LORD, class swapped": lambda: fit_lord(data, args),
                           "iVAE counterfactual": lambda: fit_sparse_shift(data, args, "ivae")}
        for name, make in counterfactuals.items():
            model, seconds = make()
            predicted = counterfactual(model, source, {"perturbation": "stim"}, n_samples=1,
                                       output="counts", seed=args.seed)
            rows[name] = {**scores(log_normalise(predicted.X.astype(float)), observed, control),
                          "fit_seconds": seconds}
            print(f"  {name}: {seconds:.0f} s, R^2 top-50 {rows[name]['r2_top50_de']:.3f}",
                  flush=True)
        for beta in (1.0, 4.0):
            name = f"beta-VAE latent arithmetic, beta {beta:g}"
            model, seconds = fit_beta_vae(data, args, beta)
            predicted = latent_arithmetic(model, data, source, key="perturbation",
                                          source="ctrl", target="stim", group_by="domain",
                                          output="counts", seed=args.seed)
            rows[name] = {**scores(log_normalise(predicted.X.astype(float)), observed, control),
                          "fit_seconds": seconds}
            print(f"  {name}: {seconds:.0f} s, R^2 top-50 {rows[name]['r2_top50_de']:.3f}",
                  flush=True)
        for name, (script, python, epochs) in externals.items():
            if not python:
                continue
            predicted, names, seconds = run_external(script, python, epochs, adata,
                                                     fold.held_out, cell_type, args.seed)
            order = pd.Index(names).get_indexer(source.obs_names)
            rows[name] = {**scores(predicted[order], observed, control), "fit_seconds": seconds}
            print(f"  {name}: {seconds:.0f} s, R^2 top-50 {rows[name]['r2_top50_de']:.3f}",
                  flush=True)
        for name, row in rows.items():
            response.append({"cell_type": cell_type, "prediction": name, **row})

    args.out.mkdir(parents=True, exist_ok=True)
    response = pd.DataFrame(response)
    response.to_csv(args.out / "response.csv", index=False)
    print_response_summary(response)


if __name__ == "__main__":
    main()
