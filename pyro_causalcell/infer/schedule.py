"""The training schedule of the sparse-shift models (iVAE, sVAE, sVAE+), set by the data size.

What an sVAE+ fit needs is a number of optimiser updates, not of passes over the cells, and
enough minibatches per pass; the rules below were chosen on the tuning seeds of the design
sweep (``benchmarks/svae_sweep.py``, ``docs/sparse_shift.rst``) and are what the benchmark,
``causalcell fit --model svae+`` and :func:`sparse_shift_schedule` use::

    schedule = pcc.sparse_shift_schedule(data.n_cells)   # 300 epochs of 256 on 20,000 cells
    pcc.fit_with_realignment(model, data, **schedule)
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..data import CellData

__all__ = ["sparse_shift_schedule", "auto_max_epochs", "auto_batch_size", "realign_after"]

#: an "auto" fit makes at least this many optimiser steps (300 epochs of batch 256 on the
#: study's 20,000 training cells, which is also 750 epochs of 128 on 4,000), and 300 epochs
STEPS = 300 * 20_000 / 256
MIN_EPOCHS = 300
#: an "auto" batch size is the largest of these that leaves this many steps per epoch
BATCH_SIZES = (256, 128, 64)
MIN_STEPS_PER_EPOCH = 25
#: Adam's learning rate and the KL warm-up (epochs) of the schedule
LR = 1e-2
KL_WARMUP_EPOCHS = 50
#: free nats per cell and latent coordinate (:class:`~pyro_causalcell.infer.FreeBitsELBO`):
#: without them realigned fits switched off 1-3 of ``nb_genes``' 20 latents and one of
#: ``controls_pairs``' 15 on seed 2; with 0.5 (set before any run, checked on tuning seed 0)
#: none was off on seeds 1-3 of the four designs (``docs/sparse_shift.rst``, "Free bits")
FREE_BITS = 0.5
#: with realignment: the share of the epochs fitted before it
REALIGN_AFTER = 2 / 3


def auto_max_epochs(n_cells: int, batch_size: int) -> int:
    """Epochs of a fit: ``max(300, ceil(23,437.5 * batch_size / n_cells))``, so every fit makes
    at least the 23,437.5 optimiser steps of 300 epochs of 256 on 20,000 cells.

    Chosen on seed 0 (sVAE+, MCC monitored during the fit). What a fit needs is a number of
    updates, not of passes over the cells: the study's design (20,000 training cells) gained
    nothing after 300 epochs of 256 (MCC 0.925), but 300 epochs of 512, half the steps, reached
    0.765 (lr 0.01) and 0.818 (lr 0.02); on 4,000 cells (10 latents, 40 x 100 cells, 200 genes;
    batch 128, lambda 50) MCC rose until about 750 epochs (0.763 / 0.817 / 0.855 / 0.871 /
    0.872 at 200 / 300 / 500 / 700 / 800), the same number of steps; and on 12,800 cells (20
    latents, 160 x 80 cells, 300 genes; batch 256) it rose from 0.554 at 300 epochs to 0.628
    at 600, which an earlier rule in passes over the cells (``3e6 / n_cells``) cut at 300.
    It is a floor, not a law: on the 4,000 cells, batch 64 (twice the steps per epoch) gave
    the same MCC per epoch as 128.
    """
    return max(MIN_EPOCHS, math.ceil(STEPS * batch_size / n_cells))


def auto_batch_size(n_cells: int) -> int:
    """The largest of 256, 128 and 64 that gives ``n_cells`` at least 25 minibatches (else 64).

    On the 4,000-cell design of :func:`auto_max_epochs` (seed 0, 300 epochs), batch 256 (16
    steps per epoch) reached MCC 0.648 where 128 reached 0.767 (64: 0.817 with lambda 50,
    against 0.817 for 128, at twice the time per epoch); on the study's design 256 and 128 tie.
    """
    return next((size for size in BATCH_SIZES if n_cells / size >= MIN_STEPS_PER_EPOCH),
                BATCH_SIZES[-1])


def realign_after(max_epochs: int) -> int:
    """The epoch after which a fit of ``max_epochs`` is realigned: two thirds of them."""
    return round(REALIGN_AFTER * max_epochs)


def sparse_shift_schedule(n_cells: int | CellData, *, realign: bool = True) -> dict:
    """Keyword arguments of :func:`~pyro_causalcell.infer.fit_with_realignment` (or, with
    ``realign=False``, :func:`~pyro_causalcell.infer.fit`) for a sparse-shift model.

    Parameters
    ----------
    n_cells : int or CellData
        Cells the model is fitted to (the validation share is taken from them by ``fit``).
    realign : bool
        Include ``realign_after`` (two thirds of the epochs).

    Returns
    -------
    dict
        ``max_epochs`` (:func:`auto_max_epochs`), ``batch_size`` (:func:`auto_batch_size`),
        ``lr`` 0.01, ``kl_warmup_epochs`` 50, ``free_bits`` 0.5 and, with ``realign``,
        ``realign_after``: e.g. 300 epochs of 256 (realigned after 200) on 20,000 cells, 750
        of 128 on 4,000.

    Raises
    ------
    ValueError
        ``n_cells`` is not a positive number of cells.
    """
    n_cells = getattr(n_cells, "n_cells", n_cells)
    if isinstance(n_cells, bool) or not isinstance(n_cells, int) or n_cells < 1:
        raise ValueError(f"n_cells must be a positive integer (or a CellData), got {n_cells!r}")
    batch_size = auto_batch_size(n_cells)
    schedule = dict(max_epochs=auto_max_epochs(n_cells, batch_size), batch_size=batch_size,
                    lr=LR, kl_warmup_epochs=KL_WARMUP_EPOCHS, free_bits=FREE_BITS)
    if realign:
        schedule["realign_after"] = realign_after(schedule["max_epochs"])
    return schedule
