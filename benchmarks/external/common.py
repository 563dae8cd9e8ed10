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
