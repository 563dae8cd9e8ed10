r"""Counterfactual and interventional queries for any model of the model protocol.

**Counterfactual** (what would *these* cells look like under the intervention?), per posterior
draw:

1. *abduction*: draw the cells' latents and the globals from the guide and recover the latents'
   exogenous noise under the factual covariates
   (:class:`~pyro_causalcell.handlers.AbductionMessenger`);
2. *action*: ``pyro.do`` on the covariate sites (``"perturbation"``, ``"domain"``, ``"label"``,
   ``"dose"``);
3. *prediction*: replay the model with the same globals, the same noise and the same library
   size (:class:`~pyro_causalcell.handlers.NoiseReplayMessenger`) and read ``"expression"``
   (or sample ``"counts"``).

**Interventional** (what does a population look like under the intervention?): the same
without abduction: latents are drawn from the intervened mechanisms.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from dataclasses import replace

import anndata as ad
import numpy as np
import pandas as pd
import pyro
import torch
from pyro import poutine

from .. import sites
from ..data import CellBatch, CellData
from ..data.schema import CONTINUOUS, perturbation_atoms
from ..handlers import AbductionMessenger, NoiseReplayMessenger
from .protocol import (check_schema, evaluation, global_latent_sites, model_device,
                       per_cell_latent_sites, sample_sites, seeded)

OUTPUTS = sites.OUTPUTS


def _category_index(site: str, value: str, known: tuple[str, ...]) -> int:
    if value not in known:
        raise ValueError(f"do={{{site!r}: {value!r}}}: {value!r} is not a known {site}; the "
                         f"model knows {list(known)[:10]}{' ...' if len(known) > 10 else ''}")
    return known.index(value)


def _standardisation(schema, site: str):
    """The named continuous covariate ``site`` (its mean and std), else None."""
    if site not in schema.covariate_names:
        return None
    covariate = schema.covariate(site)
    return covariate if covariate.kind == CONTINUOUS else None


def check_intervention_tensor(schema, site: str, value: torch.Tensor,
                              n_cells: int) -> torch.Tensor:
    """``value`` checked as ``do={site: value}`` for ``n_cells`` cells (one row per cell).

    ``"perturbation"``: ``(n_cells, n_perturbations)`` of 0 / 1 (bool and integer tensors are
    converted to float); ``"domain"``, ``"label"`` and named categorical covariates:
    ``(n_cells,)`` integer category indices; ``"dose"``: ``(n_cells,)`` finite numbers; named
    continuous covariates: ``(n_cells,)`` finite values in the column's own units (standardised
    here with the schema's mean and std); any other site: ``n_cells`` rows.

    Raises
    ------
    ValueError
        Wrong number of rows or shape, wrong dtype, or values out of range; the message names
        the site and what is expected.
    """
    name = f"do={{{site!r}: tensor}}"
    if value.ndim == 0 or value.shape[0] != n_cells:
        raise ValueError(f"{name} has shape {tuple(value.shape)}; it needs one row per cell "
                         f"({n_cells} cells), in the order of the data")
    categories, continuous = schema.categories_of(site), _standardisation(schema, site)
    if site == sites.PERTURBATION:
        expected = (n_cells, schema.n_perturbations)
        if tuple(value.shape) != expected:
            raise ValueError(f"{name} has shape {tuple(value.shape)}; expected {expected} "
                             "(cells x the model's perturbations, multi-hot)")
        value = value.float() if not value.is_floating_point() else value
        if not bool(((value == 0) | (value == 1)).all()):
            raise ValueError(f"{name} must hold 0 / 1 (multi-hot over "
                             f"{list(schema.perturbations)[:5]}...); scale by dose with "
                             "do={'dose': ...} instead")
    elif categories is not None:
        if value.ndim != 1 or value.is_floating_point() or value.dtype == torch.bool:
            raise ValueError(f"{name} must be a 1-D integer tensor of {site} indices, got shape "
                             f"{tuple(value.shape)} and dtype {value.dtype}; or give a category "
                             f"name, e.g. do={{{site!r}: {categories[0]!r}}}")
        if len(value) and (int(value.min()) < 0 or int(value.max()) >= len(categories)):
            raise ValueError(f"{name} holds indices outside [0, {len(categories) - 1}], the "
                             f"model's {len(categories)} categories of {site!r}")
    elif site == sites.DOSE or continuous is not None:
        if value.ndim != 1 or not bool(torch.isfinite(value.float()).all()):
            raise ValueError(f"{name} must be a 1-D tensor of finite values, got shape "
                             f"{tuple(value.shape)}")
        value = value.float()
        if continuous is not None:
            value = (value - continuous.mean) / continuous.std
    return value


def intervention_tensor(schema, site: str, value, n_cells: int,
                        device: torch.device) -> torch.Tensor:
    """The value of covariate ``site`` for ``n_cells`` cells under ``do={site: value}``.

    ``value`` is a name (``"STAT1"``, ``"A+B"``, the control value, ``"batch2"``, a category
    of a named covariate), a number (``"dose"``, a named continuous covariate, in its own
    units), or a tensor with one row per cell (see :func:`check_intervention_tensor`).
    """
    if isinstance(value, torch.Tensor):
        return check_intervention_tensor(schema, site, value, n_cells).to(device)
    if site == sites.PERTURBATION:
        codes = torch.zeros(n_cells, schema.n_perturbations, device=device)
        for atom in perturbation_atoms(value, schema.control):
            codes[:, _category_index(site, atom, schema.perturbations)] = 1.0
        return codes
    categories, continuous = schema.categories_of(site), _standardisation(schema, site)
    if categories is not None:
        index = _category_index(site, str(value), categories)
        return torch.full((n_cells,), index, dtype=torch.long, device=device)
    if site == sites.DOSE or continuous is not None:
        number = float(value)
        if continuous is not None:
            number = (number - continuous.mean) / continuous.std
        return torch.full((n_cells,), number, device=device)
    raise ValueError(f"do={{{site!r}: ...}}: give a tensor for a site other than the "
                     f"model's covariates {sorted([*sites.COVARIATES, *schema.covariate_names])}")


def _without(trace, names) -> poutine.Trace:
    kept = trace.copy()
    for name in names:
        kept.remove_node(name)
    return kept


def _check_sites(model, batch: CellBatch, do: dict) -> poutine.Trace:
    """The model's factual trace of ``batch`` (latents from the guide, so priors known only up
    to a constant work), after checking that every ``do`` site exists."""
    guide_trace = poutine.trace(model.guide).get_trace(batch)
    trace = poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(batch)
    names = list(sample_sites(trace))
    missing = [name for name in do if name not in names]
    if missing:
        raise ValueError(f"do={{{missing[0]!r}: ...}}: the model has no sample site "
                         f"{missing[0]!r}; its sample sites are {names}")
    return trace


def _predict(model, batch: CellBatch, values: dict, guide_trace, noise, output: str,
             interventions: Sequence = ()):
    """One run of the intervened model with the guide's globals (and, if given, the noise).

    ``interventions`` (messengers, e.g. soft interventions on latents) act inside the noise
    replay, so a replaced mechanism is driven by the cell's own abducted noise.
    """
    cell_sites = per_cell_latent_sites(guide_trace)
    program = poutine.replay(pyro.do(model.model, data=values),
                             trace=_without(guide_trace, cell_sites))
    for messenger in interventions:
        program = messenger(program)
    if output == sites.COUNTS:
        batch = replace(batch, counts=None)
    with NoiseReplayMessenger(noise or {}):
        trace = poutine.trace(program).get_trace(batch)
    return trace.nodes[output]["value"]


def _warn_if_nothing_changed(model, batch, rows: dict, factual_trace, guide_trace, noise,
                             output: str, draw: torch.Tensor, times: int) -> None:
    """Warn when ``do`` changed a covariate for some cells but not the output of any."""
    def observed(site):
        value = factual_trace.nodes[site]["value"]
        return value.repeat((times,) + (1,) * (value.dim() - 1))

    changed = [site for site, value in rows.items()
               if not torch.equal(value.to(observed(site).dtype), observed(site))]
    if not changed or output != sites.EXPRESSION:
        return
    factual = _predict(model, batch, {}, guide_trace, noise, output)
    if torch.equal(factual, draw):
        warnings.warn(
            f"do({', '.join(changed)}) changed the covariate for some cells but nothing "
            "downstream of it: either the model has no effect of it, or it ignores the site's "
            "value. A model must use the value the site returns (e.g. domain = "
            f"pyro.sample('domain', ..., obs=batch.domain)), not batch.{changed[0]}.",
            UserWarning, stacklevel=4)


def _abduct(model, batch: CellBatch, observed: Sequence[str] = ()):
    """The guide's trace and the exogenous noise of the per-cell latents (and of the
    ``observed`` sites, e.g. ``"counts"``, under their observed values)."""
    guide_trace = poutine.trace(model.guide).get_trace(batch)
    latents = per_cell_latent_sites(guide_trace)
    if not latents:
        raise ValueError(
            f"the guide has no latent sample site inside pyro.plate({sites.CELLS!r}, ...); "
            f"its sites are {list(sample_sites(guide_trace))}. A counterfactual abducts each "
            "cell's latents: put per-cell sites inside the 'cells' plate (e.g. "
            "pyro_causalcell.models.components.cells_plate(batch)), or use interventional() "
            "for a population-level answer.")
    abduction = AbductionMessenger([*latents, *observed])
    try:
        with abduction:
            poutine.trace(poutine.replay(model.model, trace=guide_trace)).get_trace(batch)
    except NotImplementedError as error:
        if not observed:
            raise
        raise NotImplementedError(
            f"keep_count_noise=True needs an observation site {observed} with a noise form "
            "(e.g. a Gaussian likelihood on log-normalised data); count likelihoods (negative "
            "binomial, ZINB, Poisson) have none. Use keep_count_noise=False: fresh count "
            f"noise, as ChiRho does. ({error})") from None
    return guide_trace, abduction.noise


def _as_data(model, data) -> tuple[CellData, pd.DataFrame]:
    if isinstance(data, ad.AnnData):
        return CellData.from_anndata(data, schema=model.schema), data.obs.copy()
    if not isinstance(data, CellData):
        raise TypeError(f"data must be an AnnData or a CellData, got {type(data).__name__}")
    check_schema(model, data)
    return data, pd.DataFrame(index=pd.Index(data.obs_names, name=None))


def _describe(do: dict, interventions: Sequence) -> str:
    parts = [f"{k}={v if not isinstance(v, torch.Tensor) else 'tensor'}" for k, v in do.items()]
    parts += [f"{type(m).__name__}({getattr(m, 'site', '')})" for m in interventions]
    return ", ".join(parts)


#: rows (cells x draws) of one vectorised pass: larger stacks ran slower on CPU (cache)
ROWS_PER_PASS = 4096


def _particles_per_pass(model, batch: CellBatch, requested: int | None, n_samples: int) -> int:
    """Draws stacked into one vectorised pass: about ``ROWS_PER_PASS`` rows, unless the guide
    has global latents (a pass shares one draw of them: then one draw per pass, the exact
    posterior average)."""
    if requested is not None:
        if requested < 1:
            raise ValueError(f"particles_per_pass must be >= 1, got {requested}")
        return min(requested, n_samples)
    if global_latent_sites(poutine.trace(model.guide).get_trace(batch)):
        return 1
    return max(1, min(n_samples, ROWS_PER_PASS // len(batch)))


def _draws(model, batch: CellBatch, rows: dict, *, n_samples: int, per_pass: int,
           abduction: bool, output: str, interventions: Sequence,
           factual_trace=None, keep_count_noise: bool = False) -> torch.Tensor:
    """``(n_samples, len(batch), n_genes)`` draws of the output for one minibatch."""
    chunks = []
    for start in range(0, n_samples, per_pass):
        times = min(per_pass, n_samples - start)
        stacked = batch.repeat(times)
        stacked_rows = {site: value.repeat((times,) + (1,) * (value.dim() - 1))
                        for site, value in rows.items()}
        if abduction:
            guide_trace, noise = _abduct(model, stacked,
                                         [sites.COUNTS] if keep_count_noise else [])
        else:
            guide_trace, noise = poutine.trace(model.guide).get_trace(stacked), None
        draw = _predict(model, stacked, stacked_rows, guide_trace, noise, output, interventions)
        if factual_trace is not None and start == 0 and not interventions:
            _warn_if_nothing_changed(model, stacked, stacked_rows, factual_trace, guide_trace,
                                     noise, output, draw, times)
        chunks.append(draw.reshape(times, len(batch), -1))
    return torch.cat(chunks)


def _query(model, data, do: dict | None, *, n_samples: int, output: str, batch_size: int,
           seed: int, abduction: bool, kind: str, n_cells: int | None = None,
           interventions: Sequence = (), particles_per_pass: int | None = None,
           keep_count_noise: bool = False) -> ad.AnnData:
    if output not in OUTPUTS:
        raise ValueError(f"output={output!r}; choose one of {OUTPUTS}")
    if keep_count_noise and output != sites.COUNTS:
        raise ValueError("keep_count_noise=True applies to output='counts'")
    do, interventions = dict(do or {}), list(interventions)
    if not do and not interventions:
        raise ValueError("do is empty: name at least one covariate site, e.g. "
                         "do={'perturbation': 'STAT1'}, or pass interventions=[...]")
    if n_samples < 1:
        raise ValueError(f"n_samples must be >= 1, got {n_samples}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    data, obs = _as_data(model, data)
    indices = None
    if n_cells is not None:  # resample cells (library sizes, untouched covariates)
        if n_cells < 1:
            raise ValueError(f"n_cells must be >= 1, got {n_cells}")
        generator = torch.Generator().manual_seed(seed)
        indices = torch.randint(data.n_cells, (n_cells,), generator=generator)
        obs = obs.iloc[indices.numpy()].copy()
        obs.index = [f"{name}-{i}" for i, name in enumerate(obs.index)]
    device = model_device(model)
    n_rows = data.n_cells if indices is None else len(indices)
    means, sds = [], []
    with evaluation(model), torch.no_grad(), seeded(seed, device):
        factual_trace = _check_sites(model, next(data.batches(batch_size, indices)).to(device),
                                     do)
        # every cell's value, checked once; each minibatch takes its rows
        values = {site: intervention_tensor(model.schema, site, value, n_rows, device)
                  for site, value in do.items()}
        start, per_pass = 0, None
        for batch in data.batches(batch_size, indices):
            batch = batch.to(device)
            if per_pass is None:
                per_pass = _particles_per_pass(model, batch, particles_per_pass, n_samples)
            rows = {site: value[start:start + len(batch)] for site, value in values.items()}
            draws = _draws(model, batch, rows, n_samples=n_samples, per_pass=per_pass,
                           abduction=abduction, output=output, interventions=interventions,
                           factual_trace=factual_trace if start == 0 else None,
                           keep_count_noise=keep_count_noise)
            start += len(batch)
            means.append(draws.mean(0).cpu())
            sds.append(draws.std(0, unbiased=False).cpu())
    obs["intervention"] = f"do({_describe(do, interventions)})"
    result = ad.AnnData(X=torch.cat(means).numpy().astype(np.float32), obs=obs,
                        var=pd.DataFrame(index=list(model.schema.genes)))
    result.layers["sd"] = torch.cat(sds).numpy().astype(np.float32)
    result.uns[kind] = {"do": {k: str(v) for k, v in do.items()}, "n_samples": n_samples,
                        "output": output, "seed": seed,
                        "interventions": [type(m).__name__ for m in interventions]}
    return result


def counterfactual(model, data: CellData | ad.AnnData, do: dict | None = None, *,
                   interventions: Sequence = (), n_samples: int = 20,
                   output: str = sites.EXPRESSION, batch_size: int = 512,
                   seed: int = 0, particles_per_pass: int | None = None,
                   keep_count_noise: bool = False) -> ad.AnnData:
    """What the cells of ``data`` would look like under the intervention ``do``.

    Abduction (guide posterior of each cell's latents and of the globals, exogenous noise of
    the latents under the factual covariates), action (``pyro.do``), prediction (the model
    replayed with the same noise and library size), averaged over ``n_samples`` posterior
    draws.

    Parameters
    ----------
    model : nn.Module following the model protocol
    data : CellData or AnnData
        The cells; an AnnData is encoded with ``model.schema`` and its ``obs`` is kept.
    do : dict
        Covariate site -> new value for every cell: ``{"perturbation": "STAT1"}`` (``"A+B"``
        for a combination, the control value for none), ``{"domain": "batch2"}``,
        ``{"label": ...}``, ``{"dose": 1.0}``, a named covariate, or tensors with one row per
        cell.
    interventions : sequence of poutine messengers
        Further interventions applied in the action step, e.g. a soft intervention that
        replaces the mechanism of chosen latents
        (:class:`~pyro_causalcell.handlers.StochasticInterventionMessenger`); the replaced
        mechanism is driven by each cell's abducted noise.
    n_samples : int
        Posterior draws averaged per cell.
    output : {"expression", "counts"}
        Expected counts (``"expression"``), or counts sampled from the likelihood: the
        latents keep the cell's abducted noise, but the count noise is drawn afresh (as ChiRho
        does), because the count likelihoods have no invertible noise form (see
        ``keep_count_noise`` for Gaussian observation sites).
    batch_size, seed : int
    particles_per_pass : int, optional
        Posterior draws evaluated together, by stacking the minibatch (a vectorised particle
        dimension instead of a Python loop). Default: as many as fit in about 4,096 rows
        (8 for the default ``batch_size``) for models without global latents, one per pass
        otherwise (a pass shares one draw of the globals).
    keep_count_noise : bool
        With ``output="counts"``, keep each cell's own observation noise too (abducted from
        its observed counts), where the observation site has a noise form: a Gaussian
        likelihood (e.g. on log-normalised data), not the count likelihoods.

    Returns
    -------
    AnnData, (n_cells, n_genes)
        ``X``: posterior mean of the counterfactual output; ``layers["sd"]``: its posterior
        standard deviation per cell and gene; ``obs``: the source cells' ``obs`` plus
        ``"intervention"``; ``uns["counterfactual"]``: the query.

    Raises
    ------
    ValueError
        Unknown category, a site the model lacks, nothing to intervene on, a bad ``output``,
        or a guide without per-cell latents in the ``"cells"`` plate.
    NotImplementedError
        A per-cell latent whose mechanism has no registered exogenous-noise form
        (:func:`~pyro_causalcell.handlers.register_noise_family`).

    Warns
    -----
    UserWarning
        ``do`` changed a covariate for some cells but not the expression of any: the model
        reads ``batch.<covariate>`` instead of the value the covariate site returns.

    Notes
    -----
    What a model must do for the answer to be a counterfactual: per-cell latents in the
    ``"cells"`` plate with a noise form (location-scale families), covariates as observed
    sample sites whose *returned* values are used downstream, and the same site names in
    model and guide.
    """
    return _query(model, data, do, n_samples=n_samples, output=output, batch_size=batch_size,
                  seed=seed, abduction=True, kind="counterfactual",
                  interventions=interventions, particles_per_pass=particles_per_pass,
                  keep_count_noise=keep_count_noise)


def interventional(model, data: CellData | ad.AnnData, do: dict | None = None, *,
                   interventions: Sequence = (), n_cells: int | None = None,
                   n_samples: int = 1, output: str = sites.EXPRESSION, batch_size: int = 512,
                   seed: int = 0, particles_per_pass: int | None = None) -> ad.AnnData:
    """Cells drawn from the model under ``do``, without abduction (population level).

    Each cell of ``data`` contributes its library size and untouched covariates; its latents
    are drawn afresh from the (intervened) mechanisms, so the result describes the population
    under ``do(...)``, not these particular cells. ``n_cells`` resamples that many cells of
    ``data`` (with replacement, seeded) instead of using each once. Other arguments and the
    result as in :func:`counterfactual` (``uns["interventional"]``).
    """
    return _query(model, data, do, n_samples=n_samples, output=output, batch_size=batch_size,
                  seed=seed, abduction=False, kind="interventional", n_cells=n_cells,
                  interventions=interventions, particles_per_pass=particles_per_pass)


__all__ = ["counterfactual", "interventional", "intervention_tensor", "check_intervention_tensor"]
