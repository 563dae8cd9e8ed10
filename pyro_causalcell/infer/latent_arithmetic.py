r"""Latent arithmetic: scGen's estimator of a response (Lotfollahi, Wolf and Theis, 2019; the
beta-VAE out-of-distribution prediction of Lotfollahi, Dony, Agarwala and Theis, 2020).

In a latent space where a condition acts as a shift, the response of cells never seen under
the ``target`` condition is predicted by adding the mean latent difference between the
``target`` and ``source`` conditions, measured on reference cells, to their latents and
decoding:

.. math::
    \delta = \bar z_{\mathrm{target}} - \bar z_{\mathrm{source}}, \qquad
    \hat x_n = \mathrm{decode}(\hat z_n + \delta),

with :math:`\hat z_n` the posterior mean of the cell's latent. With ``group_by`` (scGen
balances its populations by cell type), :math:`\delta` is the average over the groups that have
both conditions of each group's own difference, so every group weighs the same whatever its
size. It needs no model of the condition: any model with a per-cell latent site works, which
makes it the estimator to set beside :func:`~pyro_causalcell.counterfactual` on the same fitted
model.
"""

from __future__ import annotations

from dataclasses import replace

import anndata as ad
import numpy as np
import pandas as pd
import torch
from pyro import poutine

from .. import sites
from ..data import CellData
from .counterfactual import _as_data, intervention_tensor
from .latent import latent
from .protocol import evaluation, model_device, per_cell_latent_sites, seeded

__all__ = ["latent_arithmetic", "latent_shift"]


def _site_values(data: CellData, key: str) -> torch.Tensor:
    """Every cell's value of the covariate site ``key`` (``(n,)`` codes, or ``(n, P)``
    multi-hot for perturbations)."""
    value = data.covariates.get(key) if key not in sites.COVARIATES else getattr(data, key)
    if value is None:
        carried = list(data.schema.carried)
        raise ValueError(f"the data carries no {key!r}; it carries {carried}. Encode it with "
                         f"CellData.from_anndata(..., {key}_key=<the obs column>)")
    return value.cpu()


def _members(data: CellData, key: str, category) -> torch.Tensor:
    """``(n,)`` bool: the cells whose ``key`` is ``category``."""
    values = _site_values(data, key)
    code = intervention_tensor(data.schema, key, category, 1, torch.device("cpu"))[0]
    if values.dim() == 2:
        return (values == code).all(-1)
    return values == code


def latent_shift(model, data: CellData, *, key: str, source, target,
                 group_by: str | None = None, site: str | None = None,
                 batch_size: int = 1024) -> tuple[np.ndarray, list[str]]:
    """The mean latent difference ``target - source`` over the cells of ``data``.

    Parameters
    ----------
    model : nn.Module following the model protocol
    data : CellData
        Reference cells holding both conditions.
    key : str
        The covariate site that names the conditions (``"perturbation"``, ``"domain"``,
        ``"label"`` or a named categorical covariate).
    source, target : str
        Its two categories (for perturbations, the control value or a perturbation's name).
    group_by : str, optional
        A categorical site (e.g. ``"domain"`` for cell types): average the within-group
        differences of the groups that hold both conditions.
    site : str, optional
        The latent site (default: the model's ``default_latent_site``, else ``"z"``).

    Returns
    -------
    delta : (n_latent,) ndarray
    groups : list of str
        The groups the shift was averaged over (``[]`` without ``group_by``).

    Raises
    ------
    ValueError
        No reference cell of ``source`` or ``target`` (in any group), or an unknown key or
        category.
    """
    z = torch.as_tensor(latent(model, data, site, batch_size=batch_size), dtype=torch.float64)
    z = z.reshape(len(z), -1)
    is_source, is_target = (_members(data, key, c) for c in (source, target))
    if group_by is None:
        pairs = {"all cells": (is_source, is_target)}
    else:
        codes = _site_values(data, group_by)
        names = data.schema.categories_of(group_by)
        if codes.dim() != 1 or names is None:
            raise ValueError(f"group_by={group_by!r} must be a categorical covariate site "
                             "('domain', 'label' or a named categorical covariate)")
        pairs = {names[g]: (is_source & (codes == g), is_target & (codes == g))
                 for g in codes.unique().tolist()}
    pairs = {name: pair for name, pair in pairs.items() if pair[0].any() and pair[1].any()}
    if not pairs:
        where = "" if group_by is None else f" in any one {group_by}"
        raise ValueError(f"latent arithmetic needs reference cells of both {key}={source!r} and "
                         f"{key}={target!r}{where}; the data has none")
    shifts = [z[after].mean(0) - z[before].mean(0) for before, after in pairs.values()]
    return torch.stack(shifts).mean(0).numpy(), ([] if group_by is None else list(pairs))


@torch.no_grad()
def latent_arithmetic(model, data: CellData | ad.AnnData, cells: CellData | ad.AnnData, *,
                      key: str, source, target, group_by: str | None = None,
                      site: str | None = None, output: str = sites.EXPRESSION,
                      batch_size: int = 1024, seed: int = 0) -> ad.AnnData:
    """Predict ``cells`` under ``target`` by latent arithmetic (scGen's estimator).

    The shift :math:`\\delta` (:func:`latent_shift`) is measured on ``data``; each cell of
    ``cells`` is encoded (posterior means of every per-cell latent), ``site`` is moved by
    :math:`\\delta`, and the model is replayed at the cell's own covariates and library size.

    Parameters
    ----------
    model : nn.Module following the model protocol
    data : CellData or AnnData
        Reference cells with both conditions (AnnData is encoded with ``model.schema``).
    cells : CellData or AnnData
        The cells to predict, e.g. the ``source`` cells of a cell type never seen under
        ``target``; their ``obs`` is kept.
    key, source, target, group_by, site
        As in :func:`latent_shift`.
    output : {"expression", "counts"}
        The decoded expected expression, or counts drawn from the likelihood.
    batch_size, seed : int

    Returns
    -------
    AnnData, (n_cells, n_genes)
        ``X``: the prediction; ``obs``: the cells' ``obs`` plus ``"intervention"``;
        ``uns["latent_arithmetic"]``: the query, the shift ``delta`` and the groups it was
        averaged over.
    """
    if output not in sites.OUTPUTS:
        raise ValueError(f"output={output!r}; choose one of {sites.OUTPUTS}")
    data, _ = _as_data(model, data)
    cells, obs = _as_data(model, cells)
    site = site or getattr(model, "default_latent_site", sites.Z)
    delta, groups = latent_shift(model, data, key=key, source=source, target=target,
                                 group_by=group_by, site=site, batch_size=batch_size)
    device = model_device(model)
    shift = torch.as_tensor(delta, dtype=torch.get_default_dtype(), device=device)
    predictions = []
    with evaluation(model), seeded(seed, device):
        for batch in cells.batches(batch_size):
            batch = batch.to(device)
            guide_trace = poutine.trace(model.guide).get_trace(batch)
            for name in per_cell_latent_sites(guide_trace):
                node = guide_trace.nodes[name]
                mean = node["fn"].mean
                node["value"] = mean + shift.view(mean.shape[1:]) if name == site else mean
            replayed = batch if output == sites.EXPRESSION else replace(batch, counts=None)
            trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(
                replayed)
            predictions.append(trace.nodes[output]["value"].cpu())
    obs["intervention"] = f"latent arithmetic {site} + ({key}: {target} - {source})"
    result = ad.AnnData(X=torch.cat(predictions).numpy().astype(np.float32), obs=obs,
                        var=pd.DataFrame(index=list(model.schema.genes)))
    result.uns["latent_arithmetic"] = {"site": site, "key": key, "source": str(source),
                                       "target": str(target), "group_by": group_by,
                                       "groups": groups, "delta": delta, "output": output}
    return result
