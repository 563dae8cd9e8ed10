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
