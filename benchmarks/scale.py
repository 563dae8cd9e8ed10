"""Scale benchmark: one training epoch streamed from disk, at 100k, 300k and 1M cells.

Synthetic sparse counts (2,000 genes, about 5% non-zero, 50 perturbations and controls) are
written once as CSR ``.h5ad`` files under ``--workdir`` (reused when present). For each size,
each model (``VAE``, ``SparseShiftVAE``) trains one epoch on ``CellData.from_store`` (counts left
on disk, blockwise reads, a prefetch thread), each run in a fresh process so that its peak
resident memory is its own. At the smallest size the same epoch also runs on the data loaded
into memory, the reference the streamed epoch is compared with in the same run.

    python benchmarks/scale.py                              # 100k, 300k, 1M cells, CPU
    python benchmarks/scale.py --sizes 20000 50000 --workdir /tmp/scale
    python benchmarks/scale.py --device cuda

Prints per run: seconds to open and validate the file (one streaming pass), seconds per
epoch, cells per second, microseconds per cell and peak RSS; then the ratios the targets are
about: time per cell at the largest size / at the smallest (target <= 1.15), streamed /
in-memory epoch at the smallest size (target <= 1.3), peak RSS at the largest size (target
< 4 GB).
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import resource
import time
from pathlib import Path

import numpy as np

N_GENES, DENSITY, N_PERTURBATIONS = 2000, 0.05, 50
BLOCK = 20_000


def write_synthetic(path: Path, n_cells: int, seed: int = 0) -> None:
    """CSR counts written block by block (never the whole matrix in memory)."""
    import anndata as ad
    import h5py
    import pandas as pd
    import scipy.sparse as sp

    rng = np.random.default_rng(seed)
    popularity = rng.dirichlet(np.ones(N_GENES))
    detect = np.clip(popularity * N_GENES * DENSITY, 0.001, 0.95)  # mean about DENSITY
    names = ["ctrl"] + [f"KO_{i}" for i in range(N_PERTURBATIONS)]
    perturbation = rng.choice(names, size=n_cells)
    obs = pd.DataFrame({"perturbation": pd.Categorical(perturbation)},
                       index=[f"cell{i}" for i in range(n_cells)])
    var = pd.DataFrame(index=[f"gene{i}" for i in range(N_GENES)])
    tmp = path.with_suffix(".tmp")
    with h5py.File(tmp, "w") as file:
        ad.io.write_elem(file, "obs", obs)
        ad.io.write_elem(file, "var", var)
        for first in range(0, n_cells, BLOCK):
            n = min(BLOCK, n_cells - first)
            present = rng.random((n, N_GENES)) < detect
            present[:, 0] = True  # no empty cell
            values = (1 + rng.poisson(2.0 * popularity[np.nonzero(present)[1]] * N_GENES / 20)
                      ).astype(np.float32)
            block = sp.csr_matrix((values, np.nonzero(present)[1].astype(np.int32),
                                   np.concatenate([[0], np.cumsum(present.sum(1))])),
                                  shape=(n, N_GENES))
            if first == 0:
                ad.io.write_elem(file, "X", block)
            else:
                ad.io.sparse_dataset(file["X"]).append(block)
    tmp.rename(path)


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def one_epoch(path: str, model_name: str, in_memory: bool, args, queue) -> None:
    """Open the file, train one epoch, report times and peak memory (in a fresh process)."""
    import anndata as ad
    import torch

    import pyro_causalcell as pcc

    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    keys = dict(perturbation_key="perturbation", control="ctrl")
    if in_memory:
        data = pcc.CellData.from_anndata(ad.read_h5ad(path), **keys)
    else:
        data = pcc.CellData.from_store(path, **keys)
    opened = time.perf_counter() - start
    torch.manual_seed(0)
    if model_name == "VAE":
        model = pcc.VAE(data.schema, n_latent=10)
    else:
        model = pcc.SparseShiftVAE(data.schema, n_latent=10)
    history = pcc.fit(model, data, max_epochs=1, batch_size=args.batch_size,
                      validation_fraction=0.0, device=args.device, progress=False, seed=0)
    queue.put(dict(opened=opened, epoch=history.seconds, n_cells=data.n_cells,
                   rss=peak_rss_mb(), elbo=history.train_elbo[-1]))


def run(path: Path, model_name: str, in_memory: bool, args) -> dict:
    context = mp.get_context("spawn")
    queue = context.Queue()
    process = context.Process(target=one_epoch,
                              args=(str(path), model_name, in_memory, args, queue))
    process.start()
    result = queue.get()
    process.join()
    return result


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[100_000, 300_000, 1_000_000])
    parser.add_argument("--workdir", type=Path, default=Path("scale_data"))
    parser.add_argument("--batch-size", type=int, default=1024)
    parser.add_argument("--models", nargs="+", default=["VAE", "SparseShiftVAE"])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--table", type=Path, help="also write the results as an RST table")
    args = parser.parse_args(argv)
    args.workdir.mkdir(parents=True, exist_ok=True)
    paths = {}
    for n in args.sizes:
        paths[n] = args.workdir / f"synthetic_{n}.h5ad"
        if not paths[n].exists():
            start = time.perf_counter()
            write_synthetic(paths[n], n)
            print(f"wrote {paths[n]} in {time.perf_counter() - start:.0f} s", flush=True)
    print(f"{'model':<15} {'cells':>9} {'counts':<9} {'open s':>7} {'epoch s':>8} "
          f"{'cells/s':>8} {'us/cell':>8} {'peak RSS MB':>11}")
    results = {}
    for model_name in args.models:
        runs = [(n, False) for n in args.sizes] + [(min(args.sizes), True)]
        for n, in_memory in runs:
            r = run(paths[n], model_name, in_memory, args)
            results[model_name, n, in_memory] = r
            print(f"{model_name:<15} {n:>9} {'memory' if in_memory else 'disk':<9} "
                  f"{r['opened']:>7.1f} {r['epoch']:>8.1f} {n / r['epoch']:>8.0f} "
                  f"{1e6 * r['epoch'] / n:>8.1f} {r['rss']:>11.0f}", flush=True)
    small, large = min(args.sizes), max(args.sizes)
    summary = []
    for model_name in args.models:
        per_cell = {n: results[model_name, n, False]["epoch"] / n for n in args.sizes}
        streamed = (results[model_name, small, False]["epoch"]
                    / results[model_name, small, True]["epoch"])
        summary.append(f"{model_name}: time per cell {large} / {small} = "
                       f"{per_cell[large] / per_cell[small]:.2f} (target <= 1.15); streamed / "
                       f"in-memory epoch at {small} = {streamed:.2f} (target <= 1.3); peak RSS "
                       f"at {large} = {results[model_name, large, False]['rss'] / 1024:.2f} GB "
                       "(target < 4)")
        print(summary[-1])
    if args.table is not None:
        write_table(args.table, results, summary)


def write_table(path: Path, results: dict, summary: list[str]) -> None:
    """The results as an RST list-table, with the summary lines below it."""
    rows = ["   * - model\n     - cells\n     - counts\n     - open + validate s\n"
            "     - epoch s\n     - cells / s\n     - µs / cell\n     - peak RSS MB"]
    for (model_name, n, in_memory), r in results.items():
        rows.append(f"   * - {model_name}\n     - {n:,}\n     - "
                    f"{'in memory' if in_memory else 'on disk'}\n     - {r['opened']:.1f}\n"
                    f"     - {r['epoch']:.1f}\n     - {n / r['epoch']:,.0f}\n"
                    f"     - {1e6 * r['epoch'] / n:.1f}\n     - {r['rss']:,.0f}")
    text = ".. list-table::\n   :header-rows: 1\n\n" + "\n".join(rows) + "\n\n"
    text += "\n".join(f"- {line}" for line in summary) + "\n"
    path.write_text(text)


if __name__ == "__main__":
    main()
