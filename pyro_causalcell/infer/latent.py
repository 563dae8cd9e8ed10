"""Posterior summaries of per-cell latent sites, computed batch by batch."""

from __future__ import annotations

import numpy as np
import torch
from pyro import poutine
from pyro.poutine.util import site_is_subsample

from ..data import CellData
from .fit import check_schema


def model_device(model) -> torch.device:
    """Device of the model's first parameter (CPU for a model without parameters)."""
    parameter = next(model.parameters(), None)
    return torch.device("cpu") if parameter is None else parameter.device


@torch.no_grad()
def latent(model, data: CellData, site: str = "z", *, batch_size: int = 1024,
           n_samples: int = 100) -> np.ndarray:
    """Posterior mean of a per-cell latent site under the guide.

    Parameters
    ----------
    model : nn.Module following the model protocol
    data : CellData
    site : str
        Guide sample site inside the ``"cells"`` plate (``"z"``, ``"z_inv"``, ...).
    batch_size : int
    n_samples : int
        Samples averaged when the guide's distribution has no closed-form mean.

    Returns
    -------
    (n_cells, ...) ndarray
        Posterior means, in the order of ``data``.
    """
    check_schema(model, data)
    device = model_device(model)
    was_training = model.training
    model.eval()
    chunks = []
    try:
        for batch in data.batches(batch_size):
            batch = batch.to(device)
            trace = poutine.trace(model.guide).get_trace(batch)
            if site not in trace.nodes or trace.nodes[site]["type"] != "sample":
                sites = [n for n, s in trace.nodes.items()
                         if s["type"] == "sample" and not site_is_subsample(s)]
                raise KeyError(f"the guide has no sample site {site!r}; its sample sites are "
                               f"{sites}")
            fn = trace.nodes[site]["fn"]
            try:
                mean = fn.mean
            except NotImplementedError:
                mean = fn.sample((n_samples,)).mean(0)
            chunks.append(mean.expand(fn.batch_shape + fn.event_shape))
    finally:
        model.train(was_training)
    return torch.cat(chunks).cpu().numpy()
