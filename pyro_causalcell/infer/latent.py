"""Posterior summaries of per-cell latent sites, computed batch by batch."""

from __future__ import annotations

import numpy as np
import torch
from pyro import poutine

from .. import sites
from ..data import CellData
from .protocol import check_schema, evaluation, model_device, sample_sites


@torch.no_grad()
def latent(model, data: CellData, site: str | None = None, *, batch_size: int = 1024,
           n_samples: int = 100) -> np.ndarray:
    """Posterior mean of a per-cell latent site under the guide.

    Parameters
    ----------
    model : nn.Module following the model protocol
    data : CellData
    site : str, optional
        Guide sample site inside the ``"cells"`` plate (``"z"``, ``"z_inv"``, ...); default:
        the model's ``default_latent_site`` (``"z_inv"`` for InVAE), else ``"z"``.
    batch_size : int
    n_samples : int
        Samples averaged when the guide's distribution has no closed-form mean.

    Returns
    -------
    (n_cells, ...) ndarray
        Posterior means, in the order of ``data``.
    """
    check_schema(model, data)
    site = site or getattr(model, "default_latent_site", sites.Z)
    device = model_device(model)
    chunks = []
    with evaluation(model):
        for batch in data.batches(batch_size):
            batch = batch.to(device)
            trace = poutine.trace(model.guide).get_trace(batch)
            if site not in sample_sites(trace):
                raise KeyError(f"the guide has no sample site {site!r}; its sample sites are "
                               f"{list(sample_sites(trace))}")
            fn = trace.nodes[site]["fn"]
            try:
                mean = fn.mean
            except NotImplementedError:
                mean = fn.sample((n_samples,)).mean(0)
            chunks.append(mean.expand(fn.batch_shape + fn.event_shape))
    return torch.cat(chunks).cpu().numpy()
