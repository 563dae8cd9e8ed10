"""Resumable fits: an atomic checkpoint of everything :func:`~pyro_causalcell.fit` needs to go on
exactly where it stopped.

A checkpoint holds the model's state, the optimisers' states (the ELBO's and each adversary's,
with the adversaries' parameters), the history so far, the next epoch, the random states
(Python, NumPy, torch on CPU and CUDA, and the fit's own shuffling generator) and the
early-stopping bookkeeping. It is written to a temporary file beside its path and moved into
place with one ``os.replace``, so a fit killed at any moment leaves either the previous
checkpoint or the new one, never half of one. A fit started with the same ``checkpoint`` path
and the same settings resumes from it and ends where an uninterrupted fit with the same seed
ends.
"""

from __future__ import annotations

import dataclasses
import os
import tempfile
from pathlib import Path

import pyro.util
import torch

from .history import TrainingHistory

__all__ = ["write_checkpoint", "read_checkpoint", "CheckpointMismatchError"]

FORMAT = 1


class CheckpointMismatchError(ValueError):
    """A checkpoint was written by a fit with other settings than the one resuming it."""


def write_checkpoint(path: str | os.PathLike, *, fingerprint: dict, epoch: int, model,
                     step, history: TrainingHistory, generator: torch.Generator,
                     best: tuple, stale_epochs: int) -> None:
    """Write the state after ``epoch`` complete epochs to ``path`` atomically.

    Parameters
    ----------
    fingerprint : dict
        The fit's settings that a resumed fit must share (data size, seed, batch size, ...).
    epoch : int
        Epochs completed; the resumed fit starts at this epoch.
    model : nn.Module
    step : TrainingStep
        Its ``state_dict()`` holds the optimisers and the adversaries.
    history : TrainingHistory
    generator : torch.Generator
        The fit's shuffling generator.
    best : (float, dict or None)
        Early stopping's best score and the parameters of that epoch.
    stale_epochs : int
        Epochs since the best one.
    """
    path = Path(path)
    state = {"format": FORMAT, "fingerprint": fingerprint, "epoch": epoch,
             "model": model.state_dict(), "step": step.state_dict(),
             "history": dataclasses.asdict(history), "rng": pyro.util.get_rng_state(),
             "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
             "generator": generator.get_state(), "best": best, "stale_epochs": stale_epochs}
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as file:
            torch.save(state, file)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


#: a setting a fingerprint leaves out when it has its default value (e.g. ``free_bits``)
_DEFAULT = object()


def _shown(value) -> str:
    return "the default" if value is _DEFAULT else repr(value)


def read_checkpoint(path: str | os.PathLike, fingerprint: dict) -> dict | None:
    """The checkpoint at ``path`` (``None`` when there is none yet), checked against the
    resuming fit's ``fingerprint``.

    The file is unpickled (it holds random states): read only checkpoints you wrote.

    Raises
    ------
    CheckpointMismatchError
        The checkpoint was written with other settings; the message names them.
    """
    path = Path(path)
    if not path.exists():
        return None
    state = torch.load(path, map_location="cpu", weights_only=False)
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        raise CheckpointMismatchError(f"{path} is not a checkpoint of this version of fit; "
                                      "delete it or pass another checkpoint path")
    written = state["fingerprint"]
    keys = [*fingerprint, *(key for key in written if key not in fingerprint)]
    differ = {key: (written.get(key, _DEFAULT), fingerprint.get(key, _DEFAULT)) for key in keys
              if written.get(key, _DEFAULT) != fingerprint.get(key, _DEFAULT)}
    if differ:
        listed = ", ".join(f"{key}: {_shown(old)} then, {_shown(new)} now" for key, (old, new)
                           in differ.items())
        raise CheckpointMismatchError(
            f"{path} was written by a fit with other settings ({listed}); resume with the "
            "settings it was written with, or pass another checkpoint path to start afresh")
    return state


def restore_random_states(state: dict, generator: torch.Generator) -> None:
    """Put the random states of ``state`` back (global ones and the fit's generator)."""
    pyro.util.set_rng_state(state["rng"])
    if state["cuda_rng"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda_rng"])
    generator.set_state(state["generator"])
