r"""The posterior of a categorical covariate under the generative model, enumerated.

For a model in which a categorical covariate :math:`c` (a cell type, a condition) sets the prior
of latents :math:`z`, its posterior given a cell's counts :math:`x` is

.. math::
    p(c \mid x) \approx \mathbb{E}_{q(z \mid x)}\big[p(c \mid z, x)\big], \qquad
    p(c = k \mid z, x) = \frac{p(c = k)\, p(z, x \mid c = k)}{\sum_{k'} p(c = k')\,
    p(z, x \mid c = k')},

computed by running the model once per category with the covariate conditioned on it (an
enumeration over the categories) and the latents replayed from the guide, then averaging over
posterior samples. The guide must not read the covariate (inVAE's does not), so new cells whose
covariate is unknown (``CellData.from_anndata(..., unknown=["label"])``) can be classified.
This is the model's own classifier; :class:`~pyro_causalcell.infer.LatentClassifier` is the
discriminative one fitted on a latent afterwards.
"""

from __future__ import annotations

import dataclasses

import pandas as pd
import torch
from pyro import poutine

from .. import sites
from ..data import CellBatch, CellData
from .protocol import check_schema, evaluation, model_device, seeded

__all__ = ["covariate_posterior"]


def _with_category(batch: CellBatch, site: str, category: int) -> CellBatch:
    """A copy of ``batch`` in which every cell has covariate ``site`` = ``category``."""
    value = batch.library.new_full((len(batch),), category, dtype=torch.long)
    if site in sites.COVARIATES:
        return dataclasses.replace(batch, **{site: value})
    return dataclasses.replace(batch, covariates={**batch.covariates, site: value})


def _log_joint_per_cell(trace, n_rows: int) -> torch.Tensor:
    """``(n_rows,)`` sum of every per-cell site's log density (global sites are the same for
    every category and cancel)."""
    trace.compute_log_prob()
    total = torch.zeros(n_rows)
    for node in trace.nodes.values():
        if node["type"] == "sample" and "log_prob" in node:
            log_prob = node["log_prob"]
            if log_prob.dim() == 1 and log_prob.shape[0] == n_rows:
                total = total.to(log_prob.device) + log_prob
    return total


@torch.no_grad()
def covariate_posterior(model, data: CellData, site: str = sites.LABEL, *,
                        n_samples: int = 20, batch_size: int = 512,
                        seed: int = 0) -> pd.DataFrame:
    """Probability of each category of covariate ``site`` for each cell, under the model.

    Parameters
    ----------
    model : nn.Module following the model protocol
        Its model observes ``site``; its guide must not read it.
    data : CellData
        Encoded with the model's schema; ``site`` may be unknown
        (``CellData.from_anndata(..., schema=model.schema, unknown=[site])``).
    site : str
        A categorical covariate: ``"label"``, ``"domain"`` or a named one.
    n_samples : int
        Posterior samples of the latents averaged over.
    batch_size : int
    seed : int

    Returns
    -------
    pandas.DataFrame
        ``(n_cells, n_categories)`` probabilities, rows named by cell, columns by category;
        ``.idxmax(axis=1)`` is the most probable category.
    """
    check_schema(model, data)
    categories = data.schema.categories_of(site)
    if not categories:
        raise ValueError(f"{site!r} is not a categorical covariate of this data (categorical: "
                         f"{[n for n in data.schema.carried if data.schema.categories_of(n)]})")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    device = model_device(model)
    chunks = []
    with evaluation(model), seeded(seed):
        for batch in data.batches(batch_size):
            batch = batch.to(device)
            hidden = _with_category(batch, site, 0)
            probabilities = torch.zeros(len(batch), len(categories), device=device)
            for _ in range(n_samples):
                guide_trace = poutine.trace(model.guide).get_trace(hidden)
                replayed = poutine.replay(model.model, trace=guide_trace)
                log_joint = torch.stack([
                    _log_joint_per_cell(poutine.trace(replayed).get_trace(
                        _with_category(batch, site, k)), len(batch))
                    for k in range(len(categories))], -1)
                probabilities += torch.softmax(log_joint, -1)
            chunks.append(probabilities / n_samples)
    return pd.DataFrame(torch.cat(chunks).cpu().numpy(), index=data.obs_names,
                        columns=list(categories))
