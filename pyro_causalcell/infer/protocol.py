"""The model protocol, and the helpers every engine uses to work with any model that follows it.

A model is a ``torch.nn.Module`` with ``model(batch)`` and ``guide(batch)`` whose per-cell sites
sit inside ``pyro.plate("cells", ...)`` (see :mod:`pyro_causalcell.sites`), and usually a
``schema`` (the :class:`~pyro_causalcell.data.CellSchema` it was built for) and ``init_args``
(for :func:`~pyro_causalcell.infer.save`). Engines check the schema, find the model's device,
run the model in evaluation mode, sort its sites into per-cell, global and observed ones, and
seed their random streams, all with the functions here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any, Protocol, runtime_checkable

import torch
from pyro.poutine.util import site_is_subsample

from .. import sites
from ..data import CellBatch, CellData
from .rng import seeded

__all__ = ["CellModel", "check_schema", "model_device", "evaluation", "non_finite_parameters",
           "sample_sites",
           "per_cell_latent_sites", "global_latent_sites", "observed_sites", "seeded"]


@runtime_checkable
class CellModel(Protocol):
    """What the engines need of a model (``schema`` and ``init_args`` are optional)."""

    def model(self, batch: CellBatch) -> Any: ...

    def guide(self, batch: CellBatch) -> Any: ...

    def parameters(self, recurse: bool = True) -> Iterator[torch.nn.Parameter]: ...

    def train(self, mode: bool = True) -> Any: ...


def check_schema(model, data: CellData) -> None:
    """Raise if ``data`` was not encoded with the schema the model was built for."""
    schema = getattr(model, "schema", None)
    if schema is None or schema == data.schema:
        return
    diff = "; ".join(schema.differences(data.schema))
    raise ValueError(
        f"data was encoded differently from the data this model was built for ({diff}). Encode "
        "it with the model's schema: CellData.from_anndata(adata, schema=model.schema)")


def model_device(model) -> torch.device:
    """Device of the model's first parameter (CPU for a model without parameters)."""
    parameter = next(model.parameters(), None)
    return torch.device("cpu") if parameter is None else parameter.device


@contextlib.contextmanager
def evaluation(model) -> Iterator[None]:
    """Evaluation mode (no dropout, batch norm on running statistics) inside the block; the
    model's training mode is restored afterwards, even on an error."""
    was_training = model.training
    model.eval()
    try:
        yield
    finally:
        model.train(was_training)


def non_finite_parameters(model) -> list[str]:
    """Names of the model's floating-point parameters and buffers holding NaN or inf."""
    return [name for name, value in model.state_dict().items()
            if value.is_floating_point() and not bool(torch.isfinite(value).all())]


def sample_sites(trace) -> dict[str, dict]:
    """The sample sites of a trace, without plates' subsample sites and ``pyro.deterministic``
    records (``"expression"``)."""
    return {name: site for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site_is_subsample(site)
            and not site["infer"].get("_deterministic")}


def _in_cells_plate(site: dict) -> bool:
    return any(frame.name == sites.CELLS for frame in site["cond_indep_stack"])


def per_cell_latent_sites(trace) -> list[str]:
    """Unobserved sample sites inside the ``"cells"`` plate (``"z"``, ``"z_inv"``, ...)."""
    return [name for name, site in sample_sites(trace).items()
            if not site["is_observed"] and _in_cells_plate(site)]


def global_latent_sites(trace) -> list[str]:
    """Unobserved sample sites outside the ``"cells"`` plate (shifts, target probabilities)."""
    return [name for name, site in sample_sites(trace).items()
            if not site["is_observed"] and not _in_cells_plate(site)]


def observed_sites(trace) -> list[str]:
    """Observed sample sites (``"counts"`` and the covariates)."""
    return [name for name, site in sample_sites(trace).items() if site["is_observed"]]
