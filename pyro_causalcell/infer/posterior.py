"""Posterior samples of a model's global (not per-cell) sites, as ArviZ ``InferenceData``."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
from pyro import poutine

from .. import sites
from ..data import CellData
from .protocol import check_schema, evaluation, global_latent_sites, model_device, seeded

if TYPE_CHECKING:
    import arviz

# plate name -> (dimension name, schema attribute holding its coordinates)
PLATE_DIMS = {sites.PERTURBATIONS: (sites.PERTURBATION, "perturbations"),
              sites.DOMAINS: (sites.DOMAIN, "domains")}


def _dims(model, name: str, site: dict) -> tuple[list[str], dict[str, list]]:
    """Dimension names of one site's value, and the coordinates of the named ones."""
    value = site["value"]
    n_event = len(site["fn"].event_shape)  # plate dims count from the right of the batch shape
    plates = {value.dim() - n_event + frame.dim: frame
              for frame in site["cond_indep_stack"] if frame.dim is not None}
    schema = getattr(model, "schema", None)
    n_latent = getattr(model, "n_latent", None)
    dims, coords = [], {}
    for axis, size in enumerate(value.shape):
        frame = plates.get(axis)
        labels = None
        if frame is not None and frame.name in PLATE_DIMS and schema is not None:
            dim, attribute = PLATE_DIMS[frame.name]
            labels = list(getattr(schema, attribute, ()))
        elif axis == value.dim() - 1 and size == n_latent:
            dim, labels = "latent", [f"z{k}" for k in range(size)]
        if labels is None or len(labels) != size:
            dim, labels = f"{name}_dim_{axis}", None
        dims.append(dim)
        if labels is not None:
            coords[dim] = labels
    return dims, coords


@torch.no_grad()
def global_posterior(model, data: CellData, sites: Sequence[str] | None = None,
                     n_samples: int = 500, seed: int = 0) -> arviz.InferenceData:
    """Samples of the guide's global sites (shifts, target probabilities, ...) as ArviZ data.

    Global sites are the guide's latent sample sites outside the ``"cells"`` plate, e.g. a
    :class:`~pyro_causalcell.models.SparseShiftVAE`'s ``"shift"`` and
    ``"target_probability"``. The guide is run ``n_samples`` times on one cell (so dependent
    global sites are sampled jointly); the global RNG state is left unchanged. Credible
    intervals: ``az.summary(idata, hdi_prob=0.9)``.

    Parameters
    ----------
    model : nn.Module following the model protocol
    data : CellData
        Data encoded with the model's schema (one cell of it feeds the guide).
    sites : sequence of str, optional
        Global guide sites to keep (default: all of them).
    n_samples : int
    seed : int
        Seed of the sampling.

    Returns
    -------
    arviz.InferenceData
        ``posterior`` group with one variable per site, shaped ``(1, n_samples, *site_shape)``
        (chain, draw, ...). Dimensions of the ``"perturbations"`` / ``"domains"`` plates are
        ``"perturbation"`` / ``"domain"`` (coordinates from ``model.schema``), a last dimension
        of size ``model.n_latent`` is ``"latent"`` (``z0 .. z{K-1}``), others
        ``"<site>_dim_<i>"``.

    Raises
    ------
    ValueError
        If the guide has no global sites, or ``sites`` names one it does not have.
    """
    with warnings.catch_warnings():  # arviz 0.2x announces its refactor on import
        warnings.simplefilter("ignore", FutureWarning)
        import arviz as az

    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    check_schema(model, data)
    device = model_device(model)
    batch = data.batch(torch.arange(1)).to(device)
    with evaluation(model), seeded(seed, device):
        traces = [poutine.trace(model.guide).get_trace(batch) for _ in range(n_samples)]

    available = global_latent_sites(traces[0])
    if not available:
        raise ValueError(f"{type(model).__name__} has no global sites: every sample site of its "
                         "guide is inside the 'cells' plate (see latent() for per-cell sites)")
    sites = available if sites is None else list(sites)
    unknown = [name for name in sites if name not in available]
    if unknown:
        raise ValueError(f"unknown global site(s) {unknown}; the guide's global sites are "
                         f"{available}")

    posterior, dims, coords = {}, {}, {}
    for name in sites:
        samples = torch.stack([trace.nodes[name]["value"] for trace in traces])
        posterior[name] = samples.cpu().numpy()[np.newaxis]
        dims[name], site_coords = _dims(model, name, traces[0].nodes[name])
        coords.update(site_coords)
    return az.from_dict(posterior=posterior, coords=coords, dims=dims)
