"""Record of a training run."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd


@dataclass
class TrainingHistory:
    """Per-epoch ELBO of a :func:`~pyro_causalcell.infer.fit` run (per cell, higher is better).

    Attributes
    ----------
    train_elbo : list of float
        Mean per-cell objective on the training cells during each epoch (during KL warm-up this is
        the warmed-up objective that was optimised).
    validation_elbo : list of float
        Per-cell ELBO on held-out cells after each epoch (empty without validation).
    kl_weight : list of float
        KL weight used in each epoch.
    best_epoch : int or None
        Epoch (0-based) whose parameters were kept by early stopping.
    stopped_early : bool
    seconds : float
        Wall time of training.
    """

    train_elbo: list[float] = field(default_factory=list)
    validation_elbo: list[float] = field(default_factory=list)
    kl_weight: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False
    seconds: float = 0.0

    @property
    def n_epochs(self) -> int:
        return len(self.train_elbo)

    def to_dataframe(self) -> pd.DataFrame:
        """One row per epoch: ``epoch``, ``train_elbo``, ``validation_elbo``, ``kl_weight``."""
        n = self.n_epochs
        validation = self.validation_elbo + [float("nan")] * (n - len(self.validation_elbo))
        return pd.DataFrame({"epoch": range(n), "train_elbo": self.train_elbo,
                             "validation_elbo": validation[:n], "kl_weight": self.kl_weight})
