r"""Importance-weighted ELBO: a per-cell log-likelihood estimate for any model of the protocol.

For a cell :math:`x` with per-cell latents :math:`z` and the guide :math:`q(z \mid x)`,

.. math::
    \mathcal{L}_K(x) = \log \frac{1}{K} \sum_{k=1}^{K}
        \frac{p(x, z_k)}{q(z_k \mid x)}, \qquad z_k \sim q(z \mid x),

is a lower bound on :math:`\log p(x)` that increases with :math:`K`, equals the ELBO in
expectation for :math:`K = 1`, and tends to :math:`\log p(x)` as :math:`K \to \infty`
(Burda et al., 2016). It is computed from the program's traces, so it needs nothing of a model
beyond the model protocol (``model(batch)``, ``guide(batch)``, per-cell sites inside
``pyro.plate("cells", ...)``).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from pyro import poutine
from pyro.poutine.util import site_is_factor, site_is_subsample

from .. import sites
from ..data import CellBatch, CellData
from .protocol import evaluation, model_device, seeded

__all__ = ["COVARIATE_SITES", "importance_weighted_elbo", "mean_importance_weighted_elbo"]

#: Observed covariate sites of the model protocol, conditioned on rather than scored.
COVARIATE_SITES = sites.COVARIATES


def _cells_dim(site: dict) -> int | None:
    for frame in site["cond_indep_stack"]:
        if frame.name == sites.CELLS:
            if not frame.vectorized or frame.dim is None:
                raise ValueError(f"site {site['name']!r} is in a sequential 'cells' plate; the "
                                 "model protocol needs a vectorised pyro.plate('cells', ...)")
            return frame.dim
    return None


def _scored_sites(trace, exclude: Sequence[str]) -> dict[str, dict]:
    """Sample sites of a trace inside the cells plate that enter the density ratio."""
    sites = {}
    for name, site in trace.nodes.items():
        if site["type"] != "sample" or site_is_subsample(site) or site_is_factor(site):
            continue
        if site["infer"].get("_deterministic") or site["infer"].get("is_auxiliary"):
            continue
        if name in exclude:
            continue
        if _cells_dim(site) is not None:
            sites[name] = site
    return sites


def _per_cell_log_prob(site: dict, n_rows: int) -> torch.Tensor:
    """Unscaled (but masked) log-density of a site, summed to one value per row of the batch."""
    log_prob = site["fn"].log_prob(site["value"], *site["args"], **site["kwargs"])
    mask = site["mask"]
    if mask is not None and mask is not True:
        log_prob = torch.where(torch.as_tensor(mask, device=log_prob.device), log_prob,
                               log_prob.new_zeros(()))
    dim = _cells_dim(site)
    if log_prob.dim() < -dim:
        log_prob = log_prob.reshape((1,) * (-dim - log_prob.dim()) + tuple(log_prob.shape))
    shape = list(log_prob.shape)
    shape[dim] = n_rows
    log_prob = log_prob.expand(shape).movedim(dim, 0)
    return log_prob.reshape(n_rows, -1).sum(1)


def _log_weights(model, batch: CellBatch, exclude: Sequence[str]) -> torch.Tensor:
    """``(len(batch),)`` log importance weights ``log p(x, z) - log q(z | x)``, one z per row."""
    guide_trace = poutine.trace(model.guide).get_trace(batch)
    model_trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(batch)
    n_rows = len(batch)
    model_sites = _scored_sites(model_trace, exclude)
    guide_sites = _scored_sites(guide_trace, exclude)
    if not model_sites:
        raise ValueError("the model has no sample site inside pyro.plate('cells', ...); the "
                         "importance-weighted ELBO needs per-cell sites (model protocol)")
    unmatched = [name for name in guide_sites
                 if name not in model_sites or model_sites[name]["is_observed"]]
    if unmatched:
        raise ValueError(f"guide sites {unmatched} in the cells plate are not latent sites of the "
                         "model; auxiliary guide variables are not supported")
    log_weight = torch.zeros(n_rows, device=batch.library.device)
    for name, site in model_sites.items():
        # a per-cell latent the guide does not sample was drawn from the prior: p/q cancels
        if site["is_observed"] or name in guide_sites:
            log_weight = log_weight + _per_cell_log_prob(site, n_rows)
    for site in guide_sites.values():
        log_weight = log_weight - _per_cell_log_prob(site, n_rows)
    return log_weight


def importance_weighted_elbo(model, data: CellData, n_samples: int = 100, *,
                             batch_size: int = 64, indices: torch.Tensor | np.ndarray |
                             Sequence[int] | None = None, particles_per_pass: int | None = None,
                             exclude_sites: Sequence[str] | None = None,
                             seed: int | None = None) -> np.ndarray:
    r"""Per-cell importance-weighted ELBO :math:`\mathcal{L}_K` (a log-likelihood estimate).

    For each cell, ``n_samples`` latent draws :math:`z_k \sim q(z \mid x)` from the guide give

    .. math::
        \mathcal{L}_K(x) = \operatorname{logsumexp}_k
        \Big[\sum_{s \in \text{model}} \log p_s - \sum_{s \in \text{guide}} \log q_s\Big]
        - \log K,

    where the sums run over the sample sites inside the ``"cells"`` plate:

    - model sites: observed sites (``"counts"``) and the per-cell latents the guide samples;
      per-cell model latents the guide does not sample are drawn from their prior, so their
      density ratio cancels and they are left out;
    - ``exclude_sites`` (default: the protocol's observed covariates ``"perturbation"``,
      ``"domain"``, ``"label"``, ``"dose"`` and the schema's named covariates) are conditioned
      on, not scored, so the estimate is
      :math:`\log p(\text{counts} \mid \text{covariates})` and comparable across models with
      different covariate priors; pass ``()`` to score them too;
    - ``pyro.deterministic`` and ``pyro.factor`` sites (penalties) are left out;
    - densities are unscaled: neither the plate's subsampling scale nor ``poutine.scale`` factors
      such as a beta-VAE's KL weight enter; ``poutine.mask`` is respected.

    **Global sites** (outside the ``"cells"`` plate, e.g. per-perturbation shifts) are sampled
    from the guide and held fixed while the cells' particles are drawn, and their densities are
    excluded: the estimate is a bound on :math:`\log p(x \mid \theta)` at a guide draw
    :math:`\theta \sim q(\theta)` (for a point-mass guide, at the fitted value). One global draw
    is shared by the particles evaluated in one pass.

    Parameters
    ----------
    model : nn.Module following the model protocol
    data : CellData
    n_samples : int
        Importance samples :math:`K` per cell.
    batch_size : int
        Cells per batch.
    indices : (n,) int array or tensor, optional
        Cells of ``data`` to score (e.g. held-out cells); default all. The ``"cells"`` plate has
        size ``n``.
    particles_per_pass : int, optional
        Particles evaluated in one vectorised pass, by stacking the batch that many times
        (default: all ``n_samples``). A pass holds ``batch_size * particles_per_pass`` rows;
        lower either to save memory.
    exclude_sites : sequence of str
        Per-cell sites not scored (see above).
    seed : int, optional
        Seed for the draws (the global torch RNG state is restored afterwards); default: use the
        current RNG state.

    Returns
    -------
    (n,) float64 array
        :math:`\mathcal{L}_K` per cell, in the order of ``indices``.

    Notes
    -----
    Runs under ``torch.no_grad()`` with the model in eval mode (restored afterwards). Discrete
    latents are sampled by the guide like any other (enumeration is not used). Guides with
    auxiliary per-cell variables absent from the model are rejected.
    """
    if int(n_samples) != n_samples or n_samples < 1:
        raise ValueError(f"n_samples must be an integer >= 1, got {n_samples}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size}")
    n_samples, batch_size = int(n_samples), int(batch_size)
    per_pass = n_samples if particles_per_pass is None else particles_per_pass
    if int(per_pass) != per_pass or per_pass < 1:
        raise ValueError(f"particles_per_pass must be an integer >= 1, got {particles_per_pass}")
    per_pass = min(int(per_pass), n_samples)
    if exclude_sites is None:
        schema = getattr(model, "schema", None)
        exclude_sites = (*COVARIATE_SITES, *(schema.covariate_names if schema else ()))
    if not isinstance(data, CellData):
        raise ValueError(f"data must be a CellData, got {type(data).__name__}")
    if indices is None:
        indices = torch.arange(data.n_cells)
    else:
        indices = (indices.detach().cpu() if isinstance(indices, torch.Tensor)
                   else torch.as_tensor(np.asarray(indices)))
        if indices.numel() == 0:
            return np.zeros(0)
        if indices.dim() != 1 or indices.dtype == torch.bool or indices.is_floating_point():
            raise ValueError("indices must be a 1-D array of integer cell positions")
        if indices.min() < 0 or indices.max() >= data.n_cells:
            raise ValueError(f"indices must lie in [0, {data.n_cells - 1}]")
    device = model_device(model)
    results = []
    with evaluation(model), torch.no_grad(), seeded(seed, device):
        for batch in data.batches(batch_size, indices.to(data.device)):
            batch = batch.to(device)
            chunks = []
            for start in range(0, n_samples, per_pass):
                times = min(per_pass, n_samples - start)
                weights = _log_weights(model, batch.repeat(times), exclude_sites)
                chunks.append(weights.reshape(times, len(batch)).double())
            log_w = torch.cat(chunks)
            results.append(torch.logsumexp(log_w, 0) - np.log(n_samples))
    return torch.cat(results).cpu().numpy()


def mean_importance_weighted_elbo(model, data: CellData, n_samples: int = 100,
                                  **kwargs) -> float:
    """Mean over cells of :func:`importance_weighted_elbo` (same arguments).

    Returns
    -------
    float
        Average per-cell log-likelihood estimate (nats).
    """
    return float(np.mean(importance_weighted_elbo(model, data, n_samples, **kwargs)))
