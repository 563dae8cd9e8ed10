"""What the external runners share: their command-line contract with
``benchmarks/invae_benchmark.py``. Standard library only (each runner has its own venv)."""

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
