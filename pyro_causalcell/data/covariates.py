"""Named covariates: extra categorical and continuous ``obs`` columns, encoded by the schema."""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from .. import sites
from .schema import CATEGORICAL, CONTINUOUS, CellSchema, Covariate
from .validation import DataValidationError, check_known, numeric_column, obs_column

#: names a covariate cannot take: the protocol's own sites and plates, and CellBatch fields
RESERVED = frozenset({sites.CELLS, sites.PERTURBATIONS, sites.DOMAINS, sites.COUNTS,
                      sites.EXPRESSION, sites.Z, *sites.COVARIATES, "library", "index"})
_SINGLE_KEYS = ("perturbation_key", "domain_key", "label_key", "dose_key", "library_key")


def check_covariate_keys(keys: dict) -> None:
    """Refuse covariate names that are reserved, repeated, or already used by another key."""
    named = [*(keys["categorical_covariate_keys"] or ()),
             *(keys["continuous_covariate_keys"] or ())]
    reserved = sorted(set(named) & RESERVED | {n for n in named if n.startswith(f"{sites.Z}_")})
    if reserved:
        raise DataValidationError(
            f"covariate keys {reserved} are site names of the model protocol; copy the column "
            "under another name, e.g. adata.obs['batch_id'] = adata.obs['batch'].")
    repeated = sorted({n for n in named if named.count(n) > 1})
    if repeated:
        raise DataValidationError(f"covariate keys {repeated} are given more than once; list each "
                                  "column once, as categorical or as continuous.")
    taken = {keys[k]: k for k in _SINGLE_KEYS if keys[k] is not None}
    clash = [(n, taken[n]) for n in named if n in taken]
    if clash:
        name, key = clash[0]
        raise DataValidationError(f"adata.obs[{name!r}] is already {key}; a column is encoded once. "
                                  f"Drop it from the covariate keys or from {key}.")


def encode_categories(values: np.ndarray, known: tuple[str, ...] | None, key: str,
                      field: str) -> tuple[torch.Tensor, tuple[str, ...]]:
    """``(n,)`` long indices of string ``values`` into ``known`` (default: sorted values)."""
    known = tuple(sorted(set(values))) if known is None else known
    check_known(values, known, key, field)
    lookup = {c: i for i, c in enumerate(known)}
    return torch.as_tensor(np.array([lookup[v] for v in values], dtype=np.int64)), known


def encode_covariates(obs: pd.DataFrame, categorical: tuple[str, ...] | None,
                      continuous: tuple[str, ...] | None, schema: CellSchema | None,
                      unknown: frozenset[str] = frozenset()
                      ) -> tuple[tuple[Covariate, ...], dict[str, torch.Tensor]]:
    """The covariates' schema entries and their ``(n_cells,)`` tensors, by name.

    With ``schema`` the categories and standardisation of the fitted schema are used, so new
    data is encoded like the data the model saw (unseen categories are refused); covariates
    in ``unknown`` keep their schema entry and get no values.
    """
    covariates, values = [], {}
    for name in categorical or ():
        if name in unknown:
            covariates.append(schema.covariate(name))
            continue
        text = obs_column(obs, name, "categorical_covariate_keys").to_numpy()
        known = schema.covariate(name).categories if schema is not None else None
        values[name], known = encode_categories(text, known, name, "categorical_covariate_keys")
        covariates.append(Covariate(name, CATEGORICAL, categories=known))
    for name in continuous or ():
        if name in unknown:
            covariates.append(schema.covariate(name))
            continue
        raw = numeric_column(obs, name, "continuous_covariate_keys")
        if schema is not None:
            fitted = schema.covariate(name)
            mean, std = fitted.mean, fitted.std
        else:
            mean = float(raw.double().mean())
            std = float(raw.double().std(correction=0)) if len(raw) > 1 else 0.0
            std = std if std > 0 else 1.0
        values[name] = ((raw.double() - mean) / std).float()
        covariates.append(Covariate(name, CONTINUOUS, mean=mean, std=std))
    return tuple(covariates), values
