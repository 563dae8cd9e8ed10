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
        Mean per-cell ELBO on the training cells during each epoch, without penalties (during
        KL warm-up this is the warmed-up ELBO that was optimised).
    validation_elbo : list of float
        Per-cell ELBO on held-out cells after each epoch (empty without validation).
    kl_weight : list of float
        KL weight used in each epoch.
    penalties : dict of str -> list of float
        Per epoch and per cell, what each ``pyro.factor`` site (weighted) added to the
        objective (negative for a penalty); only for models that have them.
    adversary_loss : dict of str -> list of float
        Mean loss of each adversary in each epoch it trained.
    monitored : list of float
        The ``monitor`` score of each epoch (when ``fit`` was given one).
    best_epoch : int or None
        Epoch (0-based) whose parameters were kept by early stopping.
    stopped_early : bool
    interrupted : bool
        The fit was stopped by KeyboardInterrupt; the epoch in progress was dropped.
    seconds : float
        Wall time of training.
    """

    train_elbo: list[float] = field(default_factory=list)
    validation_elbo: list[float] = field(default_factory=list)
    kl_weight: list[float] = field(default_factory=list)
    penalties: dict[str, list[float]] = field(default_factory=dict)
    adversary_loss: dict[str, list[float]] = field(default_factory=dict)
    monitored: list[float] = field(default_factory=list)
    best_epoch: int | None = None
    stopped_early: bool = False
    interrupted: bool = False
    seconds: float = 0.0

    @property
    def n_epochs(self) -> int:
        return len(self.train_elbo)

    def followed_by(self, later: TrainingHistory) -> TrainingHistory:
        """This fit's epochs, then those of ``later``, a fit that continued the same model
        (early stopping's kept epoch, if any, is the later fit's, counted from here)."""
        def joined(mine: dict, theirs: dict) -> dict:
            n_mine, n_theirs = self.n_epochs, later.n_epochs
            return {k: mine.get(k, [float("nan")] * n_mine) + theirs.get(k, [float("nan")]
                                                                          * n_theirs)
                    for k in {**mine, **theirs}}

        best = None if later.best_epoch is None else self.n_epochs + later.best_epoch
        return TrainingHistory(
            train_elbo=self.train_elbo + later.train_elbo,
            validation_elbo=self.validation_elbo + later.validation_elbo,
            kl_weight=self.kl_weight + later.kl_weight,
            penalties=joined(self.penalties, later.penalties),
            adversary_loss=joined(self.adversary_loss, later.adversary_loss),
            monitored=self.monitored + later.monitored, best_epoch=best,
            stopped_early=later.stopped_early,
            interrupted=self.interrupted or later.interrupted,
            seconds=self.seconds + later.seconds)

    def to_dataframe(self) -> pd.DataFrame:
        """One row per epoch: ``epoch``, ``train_elbo``, ``validation_elbo``, ``kl_weight``, then
        ``penalty_<name>`` and ``adversary_<name>`` columns (NaN where not recorded)."""
        n = self.n_epochs

        def padded(values: list[float]) -> list[float]:
            return (values + [float("nan")] * (n - len(values)))[:n]

        columns = {"epoch": range(n), "train_elbo": self.train_elbo,
                   "validation_elbo": padded(self.validation_elbo), "kl_weight": self.kl_weight}
        columns.update({f"penalty_{k}": padded(v) for k, v in self.penalties.items()})
        columns.update({f"adversary_{k}": padded(v) for k, v in self.adversary_loss.items()})
        if self.monitored:
            columns["monitored"] = padded(self.monitored)
        return pd.DataFrame(columns)
