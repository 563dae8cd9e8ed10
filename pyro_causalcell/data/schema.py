"""The schema: how a fitted model's data was encoded (genes, keys, category orders)."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields, replace
from typing import Any

COMBINATION_SEPARATOR = "+"
CATEGORICAL, CONTINUOUS = "categorical", "continuous"


@dataclass(frozen=True)
class Covariate:
    """One extra ``obs`` column carried by name (``categorical_covariate_keys`` /
    ``continuous_covariate_keys`` of :meth:`CellData.from_anndata`).

    Attributes
    ----------
    name : str
        The ``obs`` column, also the name of the model's observed sample site.
    kind : {"categorical", "continuous"}
    categories : tuple of str
        Category order (categorical): values are encoded as indices into it.
    mean, std : float
        Standardisation (continuous): values are encoded as ``(value - mean) / std``, with the
        statistics of the data the schema was built from.
    """

    name: str
    kind: str
    categories: tuple[str, ...] = ()
    mean: float = 0.0
    std: float = 1.0

    @property
    def n_features(self) -> int:
        """Width of the covariate as a feature: categories (one-hot) or 1."""
        return len(self.categories) if self.kind == CATEGORICAL else 1


def perturbation_atoms(value: str, control: str | None) -> list[str]:
    """The single perturbations a cell's value names: ``"A+B"`` -> ``["A", "B"]``.

    Whitespace around names is dropped, and so are empty names and the control value.
    """
    atoms = (atom.strip() for atom in str(value).split(COMBINATION_SEPARATOR))
    return [atom for atom in atoms if atom and atom != control]


@dataclass(frozen=True)
class CellSchema:
    """Encoding of an AnnData into tensors, kept with every fitted model.

    Two datasets encoded with the same schema have the same gene order and the same category
    indices, so a model fitted on one can be applied to the other.

    Attributes
    ----------
    genes : tuple of str
        Gene names (``adata.var_names``) in model order.
    layer : str or None
        Layer holding raw counts; ``None`` means ``adata.X``.
    perturbation_key, domain_key, label_key, dose_key, library_key : str or None
        ``adata.obs`` columns used for each covariate.
    control : str or None
        Value of ``perturbation_key`` marking unperturbed cells (encoded as all zeros).
    perturbations : tuple of str
        Single perturbations; a cell's perturbation ``"A+B"`` is multi-hot over these.
    domains, labels : tuple of str
        Category orders of ``domain_key`` and ``label_key``.
    covariates : tuple of Covariate
        Extra categorical and continuous ``obs`` columns, by name.
    """

    genes: tuple[str, ...]
    layer: str | None = None
    perturbation_key: str | None = None
    control: str | None = None
    perturbations: tuple[str, ...] = ()
    domain_key: str | None = None
    domains: tuple[str, ...] = ()
    label_key: str | None = None
    labels: tuple[str, ...] = ()
    dose_key: str | None = None
    library_key: str | None = None
    covariates: tuple[Covariate, ...] = ()

    @property
    def n_genes(self) -> int:
        return len(self.genes)

    @property
    def n_perturbations(self) -> int:
        return len(self.perturbations)

    @property
    def n_domains(self) -> int:
        return len(self.domains)

    @property
    def n_labels(self) -> int:
        return len(self.labels)

    def covariate(self, name: str) -> Covariate:
        """The covariate called ``name``.

        Raises
        ------
        KeyError
            No such covariate; the message lists the schema's covariates.
        """
        for covariate in self.covariates:
            if covariate.name == name:
                return covariate
        raise KeyError(f"the schema has no covariate {name!r}; its covariates are "
                       f"{list(self.covariate_names)}")

    @property
    def covariate_names(self) -> tuple[str, ...]:
        """Names of the named covariates (``categorical_covariate_keys`` and continuous)."""
        return tuple(c.name for c in self.covariates)

    @property
    def carried(self) -> tuple[str, ...]:
        """Every covariate site data encoded with this schema carries: ``"perturbation"``,
        ``"domain"``, ``"label"``, ``"dose"`` (where their keys are set), then the named ones."""
        keys = {"perturbation": self.perturbation_key, "domain": self.domain_key,
                "label": self.label_key, "dose": self.dose_key}
        return tuple(n for n, key in keys.items() if key is not None) + self.covariate_names

    def categories_of(self, name: str) -> tuple[str, ...] | None:
        """Categories of the categorical covariate ``name`` (``"domain"``, ``"label"`` or a
        named one); ``None`` for perturbations, doses, continuous and unknown names."""
        if name in ("domain", "label"):
            return getattr(self, f"{name}s")
        named = {c.name: c for c in self.covariates}
        return named[name].categories if name in named and named[name].kind == CATEGORICAL \
            else None

    @property
    def categorical_covariate_keys(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.covariates if c.kind == CATEGORICAL)

    @property
    def continuous_covariate_keys(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.covariates if c.kind == CONTINUOUS)

    def __repr__(self) -> str:
        parts = [f"{self.n_genes} genes"]
        if self.layer:
            parts.append(f"layer={self.layer!r}")
        if self.perturbation_key:
            parts.append(f"perturbation_key={self.perturbation_key!r} ({self.n_perturbations} "
                         f"perturbations, control={self.control!r})")
        for field in ("domain", "label"):
            key = getattr(self, f"{field}_key")
            if key:
                parts.append(f"{field}_key={key!r} ({len(getattr(self, field + 's'))} {field}s)")
        for key in ("dose_key", "library_key"):
            if getattr(self, key):
                parts.append(f"{key}={getattr(self, key)!r}")
        if self.covariates:
            parts.append("covariates=" + ", ".join(f"{c.name!r} ({c.kind})"
                                                   for c in self.covariates))
        return f"CellSchema({', '.join(parts)})"

    def to_dict(self) -> dict[str, Any]:
        """Plain ``dict`` of lists and strings (safe for ``torch.save`` / JSON)."""
        out = asdict(self)
        for key, value in out.items():
            if isinstance(value, tuple):
                out[key] = list(value)
        out["covariates"] = [{**c, "categories": list(c["categories"])}
                             for c in out["covariates"]]
        return out

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> "CellSchema":
        """Inverse of :meth:`to_dict`."""
        names = {f.name for f in fields(cls)}
        unknown = set(values) - names
        if unknown:
            raise ValueError(f"schema has unknown fields {sorted(unknown)}")
        values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
        values["covariates"] = tuple(
            Covariate(**{**c, "categories": tuple(c.get("categories", ()))})
            for c in values.get("covariates", ()))
        return cls(**values)

    def with_perturbations(self, names) -> "CellSchema":
        """This schema with the perturbations ``names`` appended (for transfer to new ones).

        Data encoded with the result keeps every known perturbation's index; the new ones take
        the next indices, in the order given.

        Raises
        ------
        ValueError
            A name is already known, repeated, empty, the control value, or a combination.
        """
        if self.perturbation_key is None:
            raise ValueError("this schema has no perturbations (perturbation_key=None); fit the "
                             "model on data built with perturbation_key=... first")
        names = tuple(str(n) for n in names)
        known = set(self.perturbations)
        bad = [n for n in names if n in known or not n.strip() or n == self.control
               or COMBINATION_SEPARATOR in n]
        if bad or len(set(names)) != len(names):
            problem = bad or sorted({n for n in names if names.count(n) > 1})
            raise ValueError(
                f"cannot add perturbations {_preview(list(problem))}: new perturbations must be "
                "distinct single perturbations (no 'A+B', not the control value) that the schema "
                f"does not already hold ({self.n_perturbations} known)")
        return replace(self, perturbations=self.perturbations + names)

    def differences(self, other: "CellSchema") -> list[str]:
        """Human-readable list of fields where ``other`` differs from this schema."""
        out = []
        for f in fields(self):
            mine, theirs = getattr(self, f.name), getattr(other, f.name)
            if mine == theirs:
                continue
            if isinstance(mine, tuple) and isinstance(theirs, tuple):
                missing = [v for v in mine if v not in set(theirs)]
                extra = [v for v in theirs if v not in set(mine)]
                if not missing and not extra:
                    detail = "same values in a different order"
                else:
                    detail = f"missing {_preview(missing)}, unexpected {_preview(extra)}"
                out.append(f"{f.name}: {detail}")
            else:
                out.append(f"{f.name}: {mine!r} vs {theirs!r}")
        return out


def _preview(values: list[str], limit: int = 5) -> str:
    shown = ", ".join(repr(v) for v in values[:limit])
    more = f" and {len(values) - limit} more" if len(values) > limit else ""
    return f"[{shown}{more}]"
