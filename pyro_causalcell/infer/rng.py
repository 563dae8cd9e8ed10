"""Seeded random streams that leave the caller's global random state as it was."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import pyro
import torch


@contextlib.contextmanager
def seeded(seed: int | None, device: torch.device | str = "cpu") -> Iterator[None]:
    """Seed Python's, NumPy's and torch's global generators inside the block, then restore them.

    Everything drawn inside (Pyro's samplers, dropout, shuffling with the global generator) is
    reproducible from ``seed``; code after the block draws exactly what it would have drawn
    without it. ``seed=None`` leaves the generators alone.

    Parameters
    ----------
    seed : int or None
    device : torch.device or str
        A CUDA device's generator is forked and seeded too.
    """
    if seed is None:
        yield
        return
    device = torch.device(device)
    python_state, numpy_state = random.getstate(), np.random.get_state()
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        try:
            pyro.set_rng_seed(seed)
            yield
        finally:
            random.setstate(python_state)
            np.random.set_state(numpy_state)
