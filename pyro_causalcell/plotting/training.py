"""Training curves."""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np

from ..infer.history import TrainingHistory


def plot_elbo(history: TrainingHistory, ax: plt.Axes | None = None) -> plt.Axes:
    """Per-cell train and validation ELBO by epoch, with the warm-up and best epoch marked."""
    if ax is None:
        _, ax = plt.subplots(figsize=(5, 3.5))
    epochs = np.arange(history.n_epochs)
    ax.plot(epochs, history.train_elbo, label="train")
    if history.validation_elbo:
        ax.plot(epochs[:len(history.validation_elbo)], history.validation_elbo,
                label="validation")
    warmup = [i for i, w in enumerate(history.kl_weight) if w < 1.0]
    if warmup:
        ax.axvspan(0, warmup[-1] + 0.5, color="0.9", label="KL warm-up")
    if history.best_epoch is not None:
        ax.axvline(history.best_epoch, color="0.4", ls="--", lw=1, label="kept epoch")
    values = np.array(history.train_elbo + history.validation_elbo)
    if len(values) > 4:  # focus on the converged range, not the first epochs
        low = np.percentile(values, 5)
        ax.set_ylim(low - 0.05 * abs(low), values.max() + 0.02 * abs(values.max()))
    ax.set_xlabel("epoch")
    ax.set_ylabel("ELBO per cell")
    ax.legend(frameon=False)
    return ax
