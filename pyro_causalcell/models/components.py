"""Pieces of model programs shared by every model: the cells plate, covariate and count sites.

Writing models from these keeps the site names of the model protocol (``"cells"``,
``"domain"``, ``"perturbation"``, ``"expression"``, ``"counts"``) identical across models, which
is what lets one training engine and one counterfactual engine serve them all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

import pyro
import pyro.distributions as dist
import torch
import torch.nn.functional as F
from pyro import poutine
from torch import nn

from .. import sites
from ..data import CellBatch, CellSchema
from ..data.schema import CATEGORICAL
from ..nn import CountDecoder


@contextlib.contextmanager
def cells_plate(batch: CellBatch) -> Iterator[pyro.plate]:
    """``pyro.plate("cells", batch.n_cells, subsample=batch.index)``: per-cell sites go inside.

    When the batch carries per-cell weights (a balanced sampler), every site inside is also
    scaled by them, so the minibatch estimate stays unbiased for the whole set of cells.
    """
    with pyro.plate(sites.CELLS, batch.n_cells, subsample=batch.index) as plate:
        if batch.weight is None:
            yield plate
        else:
            with poutine.scale(scale=batch.weight):
                yield plate


def observe_domain(batch: CellBatch, n_domains: int) -> torch.Tensor:
    """Sample site ``"domain"`` observed at ``batch.domain`` (uniform prior).

    Returns the site's value, which is the intervened value under ``pyro.do(..., {"domain": d})``;
    downstream code must use the returned tensor, not ``batch.domain``.

    Returns
    -------
    (batch,) long tensor
    """
    logits = batch.library.new_zeros(n_domains)
    return pyro.sample(sites.DOMAIN, dist.Categorical(logits=logits), obs=batch.domain)


def observe_perturbation(batch: CellBatch) -> torch.Tensor:
    """Sample site ``"perturbation"`` observed at the multi-hot ``batch.perturbation``.

    The prior (independent Bernoulli(1/2) per perturbation) is a constant; the site exists so
    that ``pyro.do(model, {"perturbation": ...})`` reaches everything downstream of it.

    Returns
    -------
    (batch, n_perturbations) float tensor
        The (possibly intervened) multi-hot perturbations.
    """
    logits = batch.perturbation.new_zeros((batch.perturbation.shape[-1],))  # probability 1/2
    return pyro.sample(sites.PERTURBATION, dist.Bernoulli(logits=logits).to_event(1),
                       obs=batch.perturbation)


def observe_covariates(batch: CellBatch, schema: CellSchema) -> dict[str, torch.Tensor]:
    """One observed sample site per named covariate (``schema.covariates``), by its name.

    Categorical covariates have a uniform ``Categorical`` prior, continuous (standardised)
    ones a ``Normal(0, 1)`` prior; both are constants that only make the site exist, so that
    ``pyro.do(model, {"donor": ...})`` reaches everything downstream.

    Returns
    -------
    dict of str -> (batch,) tensor
        The (possibly intervened) values; use these, not ``batch.covariates``, downstream.
    """
    values = {}
    for covariate in schema.covariates:
        observed = batch.covariates[covariate.name]
        if covariate.kind == CATEGORICAL:
            prior = dist.Categorical(logits=batch.library.new_zeros(covariate.n_features))
        else:
            prior = dist.Normal(batch.library.new_zeros(()), 1.0)
        values[covariate.name] = pyro.sample(covariate.name, prior, obs=observed)
    return values


def covariate_features(values: dict[str, torch.Tensor],
                       schema: CellSchema) -> torch.Tensor | None:
    """The named covariates as one ``(batch, width)`` float matrix (one-hot categories,
    standardised numbers), in the schema's order; ``None`` without covariates."""
    return features(values, schema.covariate_names, schema)


def one_hot(index: torch.Tensor, n_categories: int) -> torch.Tensor:
    """``(batch,)`` long -> ``(batch, n_categories)`` float one-hot."""
    return F.one_hot(index, n_categories).to(torch.get_default_dtype())


def emit_counts(decoder: CountDecoder, z: torch.Tensor, batch: CellBatch,
                covariates: torch.Tensor | None = None,
                domain: torch.Tensor | None = None) -> torch.Tensor:
    """Decode ``z`` and observe the counts.

    Records ``pyro.deterministic("expression")`` (expected counts at the observed library size;
    the expected log-normalised expression for a Gaussian decoder) and the likelihood site
    ``"counts"`` observed at ``decoder.observation(batch.counts)`` (the counts, or their
    log-normalised values for a Gaussian decoder).

    Parameters
    ----------
    decoder : CountDecoder
    z : (batch, n_latent) tensor
    batch : CellBatch
    covariates : (batch, n_covariates) tensor, optional
        Decoder covariates (e.g. one-hot domain).
    domain : (batch,) long tensor, optional
        Needed for per-domain dispersion.

    Returns
    -------
    (batch, n_genes) tensor
        The expected expression.
    """
    decoded = decoder(z, batch.library, covariates)
    expression = pyro.deterministic(sites.EXPRESSION, decoded["mean"], event_dim=1)
    pyro.sample(sites.COUNTS, decoder.distribution(decoded, domain),
                obs=decoder.observation(batch.counts))
    return expression


def append_rows(parameter: nn.Parameter, n_rows: int, fill: float) -> nn.Parameter:
    """A new parameter: ``parameter`` with ``n_rows`` rows of ``fill`` appended along dim 0.

    Used by models with per-perturbation tables to make room for new perturbations; the
    existing rows are copied unchanged.
    """
    extra = parameter.detach().new_full((n_rows,) + tuple(parameter.shape[1:]), fill)
    return nn.Parameter(torch.cat([parameter.detach(), extra]))


def observe_all(batch: CellBatch, schema: CellSchema) -> dict[str, torch.Tensor]:
    """Observed sample sites for every covariate the schema carries, by site name.

    ``"perturbation"`` (multi-hot), ``"domain"``, ``"label"`` (category indices),
    ``"dose"`` and each named covariate. Use the returned values downstream, not the batch's:
    under ``pyro.do`` they are the intervened ones.

    Raises
    ------
    ValueError
        The data leaves a covariate unknown (``CellData.from_anndata(..., unknown=[...])``):
        the model cannot observe it.
    """
    check_known_covariates(batch, schema.carried, "the model observes every covariate the "
                           "schema carries (fitting, ELBOs and counterfactuals run it)")
    values = {}
    if schema.perturbation_key is not None:
        values[sites.PERTURBATION] = observe_perturbation(batch)
    if schema.domain_key is not None:
        values[sites.DOMAIN] = observe_domain(batch, schema.n_domains)
    if schema.label_key is not None:
        logits = batch.library.new_zeros(schema.n_labels)
        values[sites.LABEL] = pyro.sample(sites.LABEL, dist.Categorical(logits=logits),
                                          obs=batch.label)
    if schema.dose_key is not None:
        values[sites.DOSE] = pyro.sample(sites.DOSE, dist.Normal(batch.library.new_zeros(()),
                                                                 10.0), obs=batch.dose)
    values.update(observe_covariates(batch, schema))
    return values


def check_known_covariates(batch: CellBatch, names: Sequence[str], needed_by: str) -> None:
    """Raise a named error when the batch leaves any of ``names`` unknown."""
    missing = [n for n in names if n not in covariate_values(batch)]
    if missing:
        raise ValueError(
            f"these cells leave {missing} unknown (CellData.from_anndata(..., unknown=...)), "
            f"but {needed_by}. Encode the cells with those columns; unknown covariates are "
            "for encoding new cells (latent, covariate_posterior) with a guide that does not "
            "read them.")


def covariate_values(batch: CellBatch) -> dict[str, torch.Tensor]:
    """The batch's observed covariates by site name (for guides, which observe no site)."""
    values = {name: getattr(batch, name) for name in sites.COVARIATES
              if getattr(batch, name) is not None}
    values.update(batch.covariates)
    return values


def features(values: dict[str, torch.Tensor], names: Sequence[str],
             schema: CellSchema) -> torch.Tensor | None:
    """Covariates ``names`` as one ``(batch, width)`` float matrix: one-hot categories,
    multi-hot perturbations, numbers as a column; ``None`` for no names."""
    columns = []
    for name in names:
        value, categories = values[name], schema.categories_of(name)
        if categories is not None:
            columns.append(one_hot(value, len(categories)))
        else:
            value = value.to(torch.get_default_dtype())
            columns.append(value if name == sites.PERTURBATION else value.unsqueeze(-1))
    return torch.cat(columns, -1) if columns else None


def category_codes(values: dict[str, torch.Tensor], names: Sequence[str],
                   schema: CellSchema) -> tuple[torch.Tensor, int]:
    """One ``(batch,)`` code per combination of the categorical covariates ``names`` (mixed
    radix of their category indices) and the number of possible codes: groups of cells known
    without reading the batch on the host."""
    codes = None
    n_groups = 1
    for name in names:
        n_categories = len(schema.categories_of(name))
        value = values[name].long()
        codes = value if codes is None else codes * n_categories + value
        n_groups *= n_categories
    if codes is None:
        raise ValueError("category_codes needs at least one categorical covariate")
    return codes, n_groups


def row_table_codes(rows: torch.Tensor, table: torch.Tensor) -> torch.Tensor:
    """``(batch,)`` index of each row of ``rows`` in ``table`` (``(n, width)`` distinct rows,
    e.g. the treatments seen in training); 0 for a row not in the table. No host read."""
    matches = (rows.unsqueeze(1) == table.unsqueeze(0)).all(-1)
    return matches.to(torch.get_default_dtype()).argmax(-1)


def feature_width(names: Sequence[str], schema: CellSchema) -> int:
    """Width of :func:`features` for ``names``."""
    def width(name: str) -> int:
        if name == sites.PERTURBATION:
            return schema.n_perturbations
        categories = schema.categories_of(name)
        return 1 if categories is None else len(categories)

    return sum(width(name) for name in names)
