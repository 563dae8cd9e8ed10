"""What the external runners share: their command-line contracts with
``benchmarks/invae_benchmark.py`` and with the Kang held-out-response benchmarks
(``run_external`` in ``benchmarks/kang_heldout_response.py``), and the reading and checking of
their input. Standard library at import (each runner has its own venv)."""

from __future__ import annotations

import argparse
import os


def common_parser(description: str, epochs: int) -> argparse.ArgumentParser:
    """Input / keys / epochs / batch size / seed / output / threads, as every runner takes."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--input", required=True,
                   help=".h5ad: raw counts in X; obs with the label, batch and 'split' columns")
    p.add_argument("--label-key", required=True)
    p.add_argument("--batch-key", required=True)
    p.add_argument("--epochs", type=int, default=epochs)
    p.add_argument("--batch-size", type=int, default=256)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", required=True, help=".npz with latent, epoch_seconds, ...")
    p.add_argument("--threads", type=int, default=os.cpu_count())
    return p


def write_result(path: str, latent, obs_names, train_seconds: float, epoch_seconds: float,
                 n_epochs: int, notes: str, **extra) -> None:
    """The ``.npz`` the benchmark reads (``latent``, timings, ``notes``, any extra arrays), and
    a line saying what was written."""
    import numpy as np

    np.savez(path, latent=latent, obs_names=np.asarray(obs_names).astype(str),
             train_seconds=float(train_seconds), epoch_seconds=float(epoch_seconds),
             n_epochs=int(n_epochs), notes=notes, **extra)
    print(notes)
    print(f"wrote {path}: latent {latent.shape}, train {train_seconds:.2f}s, "
          f"{epoch_seconds:.3f}s/epoch")


def read_h5ad(path):
    """The environment's anndata reader, with a minimal h5py fallback (X, obs, var names)
    for files written by a newer anndata than the runner's environment has."""
    import anndata as ad
    import numpy as np
    import scipy.sparse as sp

    try:
        return ad.read_h5ad(path)
    except Exception as exc:  # pragma: no cover - depends on the writer's anndata version
        print(f"anndata {ad.__version__} could not read {path} ({exc!r}); using the h5py fallback")
    import h5py
    import pandas as pd

    def _col(node):
        if isinstance(node, h5py.Group):  # categorical
            cats = node["categories"][...]
            cats = [c.decode() if isinstance(c, bytes) else str(c) for c in cats]
            codes = node["codes"][...]
            return pd.Categorical.from_codes(codes, categories=cats)
        vals = node[...]
        return np.array([v.decode() if isinstance(v, bytes) else v for v in vals])

    with h5py.File(path, "r") as f:
        xg = f["X"]
        if isinstance(xg, h5py.Group):
            shape = tuple(xg.attrs["shape"])
            X = sp.csr_matrix((xg["data"][...], xg["indices"][...], xg["indptr"][...]), shape=shape)
            if xg.attrs.get("encoding-type", "csr_matrix") == "csc_matrix":
                X = sp.csc_matrix((xg["data"][...], xg["indices"][...], xg["indptr"][...]), shape=shape).tocsr()
        else:
            X = xg[...]
        obs = f["obs"]
        index = _col(obs[obs.attrs["_index"]])
        cols = list(obs.attrs.get("column-order", [k for k in obs.keys() if k != obs.attrs["_index"]]))
        df = pd.DataFrame({k: _col(obs[k]) for k in cols}, index=index)
        var = f["var"]
        var_names = _col(var[var.attrs["_index"]])
    return ad.AnnData(X=X, obs=df, var=pd.DataFrame(index=var_names))


def response_parser(description: str, epochs: int, epochs_help: str) -> argparse.ArgumentParser:
    """The held-out-response runners' options (CPA, scGen, biolord): input, keys, the
    held-out type, epochs, seed, output, threads; each runner adds its own."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--input", required=True,
                   help=".h5ad: raw counts in X; obs with perturbation, covariate and 'split'")
    p.add_argument("--perturbation-key", required=True)
    p.add_argument("--control", required=True, help="control value of the perturbation column")
    p.add_argument("--perturbation", default=None,
                   help="perturbation to predict (default: the single non-control value)")
    p.add_argument("--covariate-key", required=True)
    p.add_argument("--held-out-type", required=True)
    p.add_argument("--epochs", type=int, default=epochs, help=epochs_help)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--output", required=True)
    p.add_argument("--threads", type=int, default=os.cpu_count())
    p.add_argument("--progress", action="store_true", help="show lightning's progress bar")
    return p


def held_out_response_input(args, dtype):
    """The training cells of a held-out-response run, checked.

    Reads ``args.input`` (raw counts as CSR of ``dtype``; obs keys as strings), keeps the
    ``split == "train"`` cells and returns ``(train, target, others, query_mask)``: the
    perturbation to predict, every non-control perturbation, and the mask of the held-out
    type's control cells (the prediction's source). Raises ``ValueError`` on a bad split
    column, an unknown control or perturbation, held-out cells left in training, or no source.
    """
    import numpy as np
    import scipy.sparse as sp

    adata = read_h5ad(args.input)
    X = adata.X if sp.issparse(adata.X) else sp.csr_matrix(adata.X)
    adata.X = sp.csr_matrix(X, dtype=dtype)
    pk, ck = args.perturbation_key, args.covariate_key
    for key in (pk, ck, "split"):
        adata.obs[key] = adata.obs[key].astype(str)
    split = adata.obs["split"].to_numpy()
    if not np.isin(split, ["train", "held_out"]).all():
        raise ValueError("obs['split'] must be 'train' or 'held_out'")
    train = adata[split == "train"].copy()
    pert_values = sorted(set(train.obs[pk]))
    if args.control not in pert_values:
        raise ValueError(f"control {args.control!r} not among the training perturbations "
                         f"{pert_values}")
    others = [v for v in pert_values if v != args.control]
    target = args.perturbation
    if target is None:
        if len(others) != 1:
            raise ValueError(f"several non-control perturbations {others}: pass --perturbation")
        target = others[0]
    if target not in others:
        raise ValueError(f"perturbation {target!r} not among the training perturbations {others}")
    held_mask = (train.obs[ck] == args.held_out_type).to_numpy()
    leak = held_mask & (train.obs[pk] == target).to_numpy()
    if leak.any():
        raise ValueError(f"{int(leak.sum())} training cells are {target!r} cells of the held-out "
                         f"type {args.held_out_type!r}; they must be split 'held_out'")
    query_mask = held_mask & (train.obs[pk] == args.control).to_numpy()
    if not query_mask.any():
        raise ValueError(f"no {args.control!r} training cells of type {args.held_out_type!r}")
    return train, target, others, query_mask


def epoch_timer(callback_class, metric: str):
    """A lightning callback (``callback_class``: the ``Callback`` of the runner's lightning)
    recording each training epoch's wall time in ``times`` and, at each validation check, the
    value of ``metric`` as ``(epoch, value)`` in ``val``."""
    import time

    class EpochTimer(callback_class):
        def __init__(self):
            self.times, self.t0, self.val = [], None, []

        def on_train_epoch_start(self, trainer, pl_module):
            self.t0 = time.perf_counter()

        def on_train_epoch_end(self, trainer, pl_module):
            self.times.append(time.perf_counter() - self.t0)

        def on_validation_epoch_end(self, trainer, pl_module):
            value = trainer.callback_metrics.get(metric)
            if value is not None:
                self.val.append((int(trainer.current_epoch), float(value)))

    return EpochTimer()


def limit_threads(threads: int) -> int:
    """Cap BLAS / OpenMP threads (before numpy and torch are imported); returns the count."""
    n_threads = max(1, int(threads))
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        os.environ[var] = str(n_threads)
    return n_threads


def seed_everything(seed: int, n_threads: int) -> None:
    """torch's thread count, and Python's, NumPy's and torch's global seeds."""
    import random

    import numpy as np
    import torch

    torch.set_num_threads(n_threads)
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def log1p_cp10k(mu):
    """``log1p`` of each row normalised to 10,000 (expected counts -> the benchmark's scale)."""
    import numpy as np

    mu = np.asarray(mu, dtype=np.float64)
    total = mu.sum(axis=1, keepdims=True)
    return np.log1p(mu / np.maximum(total, 1e-12) * 1e4).astype(np.float32)
