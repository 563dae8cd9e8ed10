"""Counterfactual queries: posterior draws in one vectorised pass vs one draw per pass.

Fits a VAE briefly on simulated cells (2,000 cells x 500 genes, two batches), then answers
``do(domain)`` for every cell with ``n_samples`` posterior draws, once with
``particles_per_pass=1`` (the Python loop over draws the engine used before) and once with the
default (draws stacked into passes of about 4,096 rows), and prints both times and their
ratio. Both answers
are compared too (Monte-Carlo agreement, not bit equality: the draws differ).

    python benchmarks/counterfactual_speed.py [--n-samples 20] [--device cpu]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch

import pyro_causalcell as pcc
from pyro_causalcell.simulate import cell_types


def timed(function, repeats: int) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = function()
        best = min(best, time.perf_counter() - start)
    return best, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n-cells", type=int, default=2000)
    parser.add_argument("--n-genes", type=int, default=500)
    parser.add_argument("--n-samples", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--per-pass", type=int, default=None,
                        help="particles_per_pass of the vectorised run (default: the engine's)")
    args = parser.parse_args()

    adata = cell_types(n_cells=args.n_cells, n_genes=args.n_genes, n_batches=2, seed=0)
    adata = adata[:, np.asarray(adata.X.sum(0)).ravel() > 0].copy()  # few cells: empty genes
    data = pcc.CellData.from_anndata(adata, domain_key="batch")
    torch.manual_seed(0)
    model = pcc.VAE(data.schema, n_latent=10)
    pcc.fit(model, data, max_epochs=3, progress=False, device=args.device)
    target = {"domain": data.schema.domains[1]}

    def query(per_pass):
        return pcc.counterfactual(model, data, target, n_samples=args.n_samples,
                                  particles_per_pass=per_pass)

    looped_s, looped = timed(lambda: query(1), args.repeats)
    stacked_s, stacked = timed(lambda: query(args.per_pass), args.repeats)
    relative = np.abs(looped.X - stacked.X).mean() / np.abs(looped.X).mean()
    print(f"{data.n_cells} cells x {data.schema.n_genes} genes, {args.n_samples} draws, "
          f"device {args.device}, best of {args.repeats}")
    print(f"one draw per pass: {looped_s:.2f} s; vectorised passes: {stacked_s:.2f} s; "
          f"speed-up {looped_s / stacked_s:.2f}x")
    print(f"mean absolute difference of the answers, relative to their size: {relative:.4f}")


if __name__ == "__main__":
    main()
