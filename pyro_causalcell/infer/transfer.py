"""Transfer a fitted model to perturbations it has never seen.

The sVAE study's protocol: keep the networks and every known perturbation's parameters fixed,
add the new perturbations, learn only their parameters on their cells, then score those cells
(e.g. by :func:`~pyro_causalcell.infer.importance_weighted_elbo`).
"""

from __future__ import annotations

import copy
from typing import NamedTuple

import anndata as ad
import torch

from ..data import CellData
from ..data.schema import perturbation_atoms
from .fit import fit
from .history import TrainingHistory


class TransferResult(NamedTuple):
    """What :func:`transfer` returns."""

    model: torch.nn.Module
    """A copy of the fitted model that also knows the new perturbations."""
    data: CellData
    """The new cells, encoded with ``model.schema``."""
    history: TrainingHistory
    """Training history of the new perturbations' parameters."""


def _unknown_perturbations(adata: ad.AnnData, schema) -> list[str]:
    if schema.perturbation_key not in adata.obs.columns:
        raise ValueError(f"adata.obs has no column {schema.perturbation_key!r} "
                         "(the model's perturbation_key)")
    known = set(schema.perturbations)
    return sorted({atom for value in adata.obs[schema.perturbation_key].astype(str).unique()
                   for atom in perturbation_atoms(value, schema.control) if atom not in known})


def _check_protocol(model) -> None:
    for method in ("add_perturbations", "perturbation_parameters"):
        if not callable(getattr(model, method, None)):
            raise TypeError(
                f"transfer needs model.{method}(); {type(model).__name__} does not define it. "
                "Models with per-perturbation parameters implement add_perturbations(names) and "
                "perturbation_parameters() (see SparseShiftVAE).")


def _mask_rows(n_known: int):
    """Gradient hook that zeroes the rows of known perturbations."""
    def hook(grad: torch.Tensor) -> torch.Tensor:
        grad = grad.clone()
        grad[:n_known] = 0.0
        return grad
    return hook


def transfer(model, data: ad.AnnData | CellData, perturbations=None, *, max_epochs: int = 100,
             batch_size: int = 128, lr: float = 5e-3, device: str | torch.device = "auto",
             seed: int = 0, progress: bool = True) -> TransferResult:
    """Learn the parameters of new perturbations, everything else fixed.

    Parameters
    ----------
    model : nn.Module following the model protocol
        A fitted model with ``add_perturbations(names)`` and ``perturbation_parameters()``
        (e.g. :class:`~pyro_causalcell.models.SparseShiftVAE`). It is not modified.
    data : anndata.AnnData or CellData
        Cells of the new perturbations (they may include known ones and controls). An AnnData
        is encoded with the model's schema extended by ``perturbations``; a CellData must
        already be encoded so (``CellData.from_anndata(adata,
        schema=model.schema.with_perturbations(names))``).
    perturbations : sequence of str, optional
        The new perturbations, in the order their rows are added. Default: every perturbation
        in ``data`` that the model does not know, sorted.
    max_epochs, batch_size, lr, device, seed, progress
        As in :func:`~pyro_causalcell.infer.fit` (no validation split: every cell is used;
        the frozen networks run in eval mode, so batch-norm statistics stay as fitted).

    Returns
    -------
    TransferResult
        ``(model, data, history)``: the extended copy, the encoded cells and the history.

    Raises
    ------
    ValueError
        No new perturbation, the model has no per-perturbation parameters, or a CellData that
        is not encoded with the extended schema.
    """
    _check_protocol(model)
    schema = model.schema
    if isinstance(data, CellData):
        if perturbations is None:
            perturbations = [p for p in data.schema.perturbations
                             if p not in set(schema.perturbations)]
    elif perturbations is None:
        perturbations = _unknown_perturbations(data, schema)
    perturbations = [str(p) for p in perturbations]
    if not perturbations:
        raise ValueError("no new perturbation to transfer to: the data holds only perturbations "
                         "the model knows; score them directly, or pass perturbations=[...]")
    extended = schema.with_perturbations(perturbations)
    if isinstance(data, CellData):
        if data.schema != extended:
            diff = "; ".join(extended.differences(data.schema))
            raise ValueError(
                f"data was not encoded with the model's schema extended by {perturbations} "
                f"({diff}); pass the AnnData, or encode it with CellData.from_anndata(adata, "
                "schema=model.schema.with_perturbations(perturbations))")
    else:
        data = CellData.from_anndata(data, schema=extended)

    new_model = copy.deepcopy(model)
    new_model.add_perturbations(perturbations)
    tables = new_model.perturbation_parameters()
    if not tables:
        raise ValueError(f"{type(model).__name__} has no per-perturbation parameters to learn "
                         "(e.g. SparseShiftVAE with sparsity='vae'); score the new cells "
                         "with the model as it is")
    n_known = schema.n_perturbations
    hooks = [p.register_hook(_mask_rows(n_known)) for p in tables.values()]
    try:
        history = fit(new_model, data, max_epochs=max_epochs, batch_size=batch_size, lr=lr,
                      validation_fraction=0.0, device=device, seed=seed, progress=progress,
                      eval_mode=True, parameters=list(tables.values()))
    finally:
        for hook in hooks:
            hook.remove()
    return TransferResult(new_model, data, history)


def known_rows_unchanged(before, after) -> bool:
    """Whether every parameter of ``before`` is identical in ``after`` (known rows only).

    A check for :func:`transfer`: tables that gained rows are compared on their first rows, on
    ``before``'s device (the two models may sit on different devices).
    """
    after_state = after.state_dict()
    for name, value in before.state_dict().items():
        new = after_state[name].to(value.device)
        if not torch.equal(value, new[: value.shape[0]] if value.dim() else new):
            return False
    return True


__all__ = ["transfer", "TransferResult", "known_rows_unchanged"]
