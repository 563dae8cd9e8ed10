"""Checks on user data, each failing with a message that names the field and the fix."""

from __future__ import annotations

import numpy as np
import pandas as pd
import scipy.sparse as sp
import torch


class DataValidationError(ValueError):
    """An AnnData cannot be encoded as given; the message says which field and how to fix it."""


# text that stands for a missing value, typically left by ``obs[key].astype(str)`` on NaN / None
MISSING_AS_TEXT = frozenset({"nan", "NaN", "NAN", "None", "<NA>", "NaT"})
FLOAT32_MAX = float(np.finfo(np.float32).max)


class NonIntegerCountsWarning(UserWarning):
    """Counts are not whole numbers (normalised or log-transformed data where raw counts belong)."""


class ControlLikePerturbationWarning(UserWarning):
    """A perturbation is named like the control (``"control"``, ``"ctrl"``, ``"NT"`` ...) but
    no ``control=`` was given, so its cells are read as perturbed."""


#: names that usually mark unperturbed cells (compared case-insensitively)
CONTROL_LIKE_NAMES = frozenset({"control", "ctrl", "nt", "non-targeting", "nontargeting",
                                "non_targeting", "untreated", "unperturbed"})


def stored_values(matrix) -> np.ndarray:
    """The explicitly stored values of a dense or sparse matrix, as a flat array."""
    if sp.issparse(matrix):
        return np.asarray(matrix.data).ravel()
    return np.asarray(matrix).ravel()


class CountCheck:
    """Checks on raw counts accumulated over blocks of stored values, so a matrix on disk is
    validated in one streaming pass with the same errors as one in memory.

    Call :meth:`add` on each block's stored values, then :meth:`result`.
    """

    def __init__(self):
        self.dtype = None
        self.non_finite = self.too_large = self.negative = 0
        self.integer = True

    def add(self, values: np.ndarray) -> None:
        """Count the problems of one block of stored values (any shape)."""
        values = np.asarray(values).ravel()
        self.dtype = values.dtype
        if not np.issubdtype(values.dtype, np.number):
            return
        if np.issubdtype(values.dtype, np.integer):
            self.negative += int((values < 0).sum())
            return
        finite = np.isfinite(values)
        self.non_finite += int((~finite).sum())
        self.too_large += int((np.abs(values[finite]) > FLOAT32_MAX).sum())
        self.negative += int((values < 0).sum())
        self.integer = self.integer and bool(np.all(values[finite] == np.round(values[finite])))

    def result(self, where: str) -> bool:
        """Raise the first problem found; return whether all counts are whole numbers.

        Parameters
        ----------
        where : str
            How the user names this matrix (``"adata.X"``, ``"adata.layers['counts']"``).
        """
        if self.dtype is not None and not np.issubdtype(self.dtype, np.number):
            raise DataValidationError(f"{where} has dtype {self.dtype}; raw counts must be "
                                      "numeric.")
        if self.non_finite:
            raise DataValidationError(
                f"{where} has {self.non_finite} NaN or infinite entries; counts must be finite. "
                "Remove or fix those cells/genes, or pass the raw count layer with layer=..."
            )
        if self.too_large:
            raise DataValidationError(
                f"{where} has {self.too_large} entries above {FLOAT32_MAX:.3g}, the largest "
                "float32 value; they would become infinite when stored as float32. Raw counts "
                "are never this large: pass the raw UMI counts (e.g. layer='counts')."
            )
        if self.negative:
            raise DataValidationError(
                f"{where} has {self.negative} negative entries; counts must be >= 0. "
                "Pass the raw UMI counts (e.g. layer='counts'), not scaled or centred data."
            )
        return self.integer


def check_counts(matrix, where: str) -> bool:
    """Reject NaN/inf and negative counts; return whether all counts are whole numbers.

    Parameters
    ----------
    matrix : (n_cells, n_genes) array or sparse matrix
    where : str
        How the user names this matrix (``"adata.X"``, ``"adata.layers['counts']"``).
    """
    check = CountCheck()
    check.add(stored_values(matrix))
    return check.result(where)


def check_unique_genes(genes: list[str]) -> None:
    """Reject repeated gene names: columns could not be matched to a fitted model's genes."""
    seen: set[str] = set()
    repeated = sorted({g for g in genes if g in seen or seen.add(g)})
    if repeated:
        raise DataValidationError(
            f"adata.var_names has {len(repeated)} gene names that occur more than once (e.g. "
            f"{repeated[:5]}); genes are matched by name, so repeats cannot be told apart. Make "
            "them unique first: adata.var_names_make_unique(), or drop the repeated columns."
        )


def cell_preview(obs: pd.DataFrame, rows: np.ndarray, limit: int = 5) -> str:
    """``"3 cells (e.g. ['c1', 'c7'])"`` for the boolean or integer ``rows`` of ``obs``."""
    names = [str(n) for n in np.asarray(obs.index)[rows]]
    return f"{len(names)} cells (e.g. {names[:limit]})"


def obs_column(obs: pd.DataFrame, key: str, field: str) -> pd.Series:
    """``obs[key]`` as strings, rejecting a missing column, missing values and their text forms
    (``"nan"``, ``"None"``, ...)."""
    if key not in obs.columns:
        raise DataValidationError(
            f"{field}={key!r} is not a column of adata.obs (columns: {list(obs.columns)}). "
            f"Pass the name of an existing column as {field}."
        )
    column = obs[key]
    missing = column.isna()
    if missing.any():
        raise DataValidationError(
            f"adata.obs[{key!r}] ({field}) has {int(missing.sum())} missing values. "
            "Fill them (e.g. with 'unknown') or drop those cells before building CellData."
        )
    text = column.astype(str)
    missing_as_text = text.isin(MISSING_AS_TEXT).to_numpy()
    if missing_as_text.any():
        values = sorted(set(text[missing_as_text]))
        raise DataValidationError(
            f"adata.obs[{key!r}] ({field}) has the value(s) {values} in "
            f"{cell_preview(obs, missing_as_text)}: missing values turned into text (e.g. by "
            ".astype(str)). Fill them with a real category (e.g. 'unknown') or drop those cells."
        )
    return text


def check_known(values: np.ndarray, known: tuple[str, ...], key: str, field: str) -> None:
    """Reject categories that the fitted schema has never seen."""
    unseen = sorted(set(values) - set(known))
    if unseen:
        shown = unseen[:10]
        raise DataValidationError(
            f"adata.obs[{key!r}] ({field}) has categories not seen at fit time: {shown}"
            f"{' ...' if len(unseen) > 10 else ''}. A fitted model only knows {list(known)[:10]}"
            f"{' ...' if len(known) > 10 else ''}; drop those cells, or fit a model that "
            "includes them."
            + (" New perturbations can be added to a fitted model with "
               "pyro_causalcell.transfer(model, adata)." if field == "perturbation_key" else "")
        )


def numeric_column(obs: pd.DataFrame, key: str, field: str) -> torch.Tensor:
    """``obs[key]`` as a float tensor, rejecting a missing, non-numeric or non-finite column."""
    if key not in obs.columns:
        raise DataValidationError(
            f"{field}={key!r} is not a column of adata.obs (columns: {list(obs.columns)}). "
            f"Pass the name of an existing column as {field}.")
    try:
        values = obs[key].to_numpy(dtype=np.float64)
    except (TypeError, ValueError):
        raise DataValidationError(
            f"adata.obs[{key!r}] ({field}) must be numeric; convert it with "
            f"pd.to_numeric(adata.obs[{key!r}]).") from None
    if not np.isfinite(values).all():
        raise DataValidationError(
            f"adata.obs[{key!r}] ({field}) has {int((~np.isfinite(values)).sum())} NaN or "
            "infinite values; fill or drop those cells.")
    return torch.as_tensor(values, dtype=torch.float32)
