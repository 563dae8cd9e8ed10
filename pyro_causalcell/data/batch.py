"""Minibatches of cells, the unit every model's ``model`` / ``guide`` receives."""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import torch


@dataclass
class CellBatch:
    """A minibatch of cells as tensors.

    Attributes
    ----------
    counts : (batch, n_genes) float tensor
        Raw counts.
    library : (batch,) float tensor
        Observed library size (total counts, or ``schema.library_key``).
    index : (batch,) long tensor
        Positions of these cells in their :class:`CellData`; the ``"cells"`` plate subsamples
        with it.
    n_cells : int
        Size of the ``"cells"`` plate: the number of cells the batch was drawn from, so that
        subsampled log-likelihoods are scaled to the whole set.
    perturbation : (batch, n_perturbations) float tensor or None
        Multi-hot perturbations, all zeros for control cells.
    dose : (batch,) float tensor or None
    domain : (batch,) long tensor or None
    label : (batch,) long tensor or None
    covariates : dict of str -> (batch,) tensor
        Named covariates (``schema.covariates``): long category indices or standardised floats.
    weight : (batch,) float tensor or None
        Per-cell weights of samplers that include some cells more often than others
        (:class:`~pyro_causalcell.data.samplers.BalancedSampler`): the inverse of each cell's
        relative inclusion rate, applied by ``cells_plate``. ``None``: every cell weighs 1.
    """

    counts: torch.Tensor
    library: torch.Tensor
    index: torch.Tensor
    n_cells: int
    perturbation: torch.Tensor | None = None
    dose: torch.Tensor | None = None
    domain: torch.Tensor | None = None
    label: torch.Tensor | None = None
    covariates: dict[str, torch.Tensor] = field(default_factory=dict)
    weight: torch.Tensor | None = None

    def __len__(self) -> int:
        return self.library.shape[0]  # counts may be None (a query that samples them)

    def repeat(self, times: int) -> "CellBatch":
        """The batch stacked ``times`` times along cells (copy-major order), for vectorised
        particles: row ``k * len(batch) + i`` is cell ``i`` of copy ``k``."""
        if times == 1:
            return self

        def stack(value):
            return None if value is None else value.repeat((times,) + (1,) * (value.dim() - 1))

        tensors = {f.name: stack(getattr(self, f.name)) for f in fields(self)
                   if f.name not in ("n_cells", "covariates")}
        return CellBatch(n_cells=self.n_cells, **tensors,
                         covariates={k: stack(v) for k, v in self.covariates.items()})

    def to(self, device: torch.device | str) -> "CellBatch":
        """Copy of the batch with every tensor on ``device``."""
        moved = {
            f.name: getattr(self, f.name).to(device)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        moved["covariates"] = {k: v.to(device) for k, v in self.covariates.items()}
        return replace(self, **moved)
