"""Several fits of one model from different initialisations; the best validation ELBO is kept.

Models whose identifiability rests on a slow alignment of the latents (sVAE+ aligning them
with sparse perturbation targets) can settle in a poorer optimum from an unlucky
initialisation; the held-out ELBO tells the fits apart without any ground truth.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ..data import CellData
from .fit import fit
from .history import TrainingHistory

#: validation epochs averaged into a restart's score (the per-epoch estimate is noisy)
SCORE_EPOCHS = 5


@dataclass
class Restart:
    """One fit of :func:`fit_restarts`.

    Attributes
    ----------
    init_seed : int
        Seed of ``torch.manual_seed`` before ``make_model()`` built this fit's model.
    score : float
        Per-cell validation ELBO that ranked the fits (see :func:`restart_score`).
    history : TrainingHistory
    seconds : float
        Wall-clock seconds of this fit (``after_fit`` not included).
    kept : bool
        This fit's model is the one returned.
    """

    init_seed: int
    score: float
    history: TrainingHistory
    seconds: float = 0.0
    kept: bool = False


def check_n_restarts(n_restarts, name: str = "n_restarts") -> None:
    """Raise ``ValueError`` naming ``name`` unless ``n_restarts`` is a positive integer."""
    if isinstance(n_restarts, bool) or not isinstance(n_restarts, int) or n_restarts < 1:
        raise ValueError(f"{name} must be a positive integer, got {n_restarts!r}")


def restart_score(history: TrainingHistory) -> float:
    """The validation ELBO a fit is ranked by: at the kept epoch after early stopping, else the
    mean over the last :data:`SCORE_EPOCHS` epochs (``-inf`` when it has none)."""
    values = history.validation_elbo
    if not values:
        return -math.inf
    if history.best_epoch is not None:
        return float(values[history.best_epoch])
    last = values[-SCORE_EPOCHS:]
    return float(sum(last) / len(last))


def fit_restarts(make_model: Callable[[], torch.nn.Module], data: CellData,
                 n_restarts: int = 3, *, seed: int = 0, fit_function: Callable = fit,
                 after_fit: Callable[[torch.nn.Module, Restart], None] | None = None,
                 **fit_kwargs) -> tuple[torch.nn.Module, list[Restart]]:
    """Fit ``n_restarts`` models built by ``make_model`` and keep the best validation ELBO.

    Every fit has the same training / validation split and minibatch order (``fit``'s
    ``seed``); restart ``r`` differs in its initial parameters, drawn after
    ``torch.manual_seed(seed + r)`` (so restart 0 is the fit ``torch.manual_seed(seed)``
    then ``fit(make_model(), data, seed=seed)`` gives); the global random generator is left as
    it was. Fits run one after another and only the best model is kept in memory.

    Parameters
    ----------
    make_model : callable
        ``make_model()`` returns a new, unfitted model.
    data : CellData
    n_restarts : int
        Number of fits (1: one ordinary fit).
    seed : int
    fit_function : callable
        ``fit_function(model, data, seed=..., **fit_kwargs) -> TrainingHistory`` fits one
        restart: :func:`~pyro_causalcell.infer.fit` (default), or e.g.
        :func:`~pyro_causalcell.infer.fit_with_realignment` with its settings bound.
    after_fit : callable, optional
        ``after_fit(model, restart)`` after each fit, before the next one is made (e.g. to
        score every restart against a simulation's truth).
    **fit_kwargs
        Passed to :func:`~pyro_causalcell.infer.fit` (``max_epochs``, ``lr``, ...);
        ``validation_fraction`` must stay above 0, and ``checkpoint`` is not supported.

    Returns
    -------
    model : nn.Module
        The kept fit's model.
    restarts : list of Restart
        Every fit in order, the kept one marked.
    """
    check_n_restarts(n_restarts)
    if fit_kwargs.get("validation_fraction", 0.1) <= 0.0 and n_restarts > 1:
        raise ValueError("fit_restarts ranks fits by their validation ELBO: set "
                         "validation_fraction > 0")
    if fit_kwargs.get("checkpoint") is not None:
        raise ValueError("checkpoint is not supported by fit_restarts (each restart would "
                         "overwrite it): checkpoint single fits with fit(..., checkpoint=...)")
    best, restarts = None, []
    for r in range(n_restarts):
        with torch.random.fork_rng(devices=[]):  # the caller's generator is left alone
            torch.manual_seed(seed + r)
            model = make_model()
        start = time.perf_counter()
        history = fit_function(model, data, seed=seed, **fit_kwargs)
        restarts.append(Restart(seed + r, restart_score(history), history,
                                seconds=time.perf_counter() - start))
        if after_fit is not None:
            after_fit(model, restarts[-1])
        if best is None or restarts[-1].score > best[1].score:  # ties: the earlier fit
            best = (model, restarts[-1])
    best[1].kept = True
    return best[0], restarts
