"""``CellData``: an AnnData encoded once as tensors, plus the schema that encoded it."""

from __future__ import annotations

import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch

from .batch import CellBatch
from .covariates import check_covariate_keys, encode_categories, encode_covariates
from .schema import COMBINATION_SEPARATOR, CellSchema, perturbation_atoms
from .on_disk import CountScan, OnDiskCounts, OnDiskMatrix
from .storage import DenseCounts, SparseCounts
from .validation import (
    CONTROL_LIKE_NAMES,
    ControlLikePerturbationWarning,
    DataValidationError,
    NonIntegerCountsWarning,
    check_counts,
    check_known,
    check_unique_genes,
    cell_preview,
    numeric_column,
    obs_column,
)


@dataclass
class CellData:
    """Counts and covariates of a set of cells as tensors, with the schema that encoded them.

    Build it with :meth:`from_anndata`; the user's AnnData is only read, never modified.

    Attributes
    ----------
    counts : DenseCounts or SparseCounts
        ``(n_cells, n_genes)`` raw counts; sparse input stays sparse until a minibatch is drawn.
    library : (n_cells,) float tensor
        Observed library size per cell.
    schema : CellSchema
    obs_names : list of str
    perturbation : (n_cells, n_perturbations) float tensor or None
        Multi-hot perturbations; control cells are all zeros, ``"A+B"`` sets two entries.
    dose : (n_cells,) float tensor or None
    domain, label : (n_cells,) long tensor or None
        Category indices into ``schema.domains`` / ``schema.labels``.
    covariates : dict of str -> (n_cells,) tensor
        Named covariates: long indices into ``schema.covariate(name).categories``, or floats
        standardised with the schema's mean and standard deviation.
    """

    counts: DenseCounts | SparseCounts
    library: torch.Tensor
    schema: CellSchema
    obs_names: list[str]
    perturbation: torch.Tensor | None = None
    dose: torch.Tensor | None = None
    domain: torch.Tensor | None = None
    label: torch.Tensor | None = None
    covariates: dict[str, torch.Tensor] = field(default_factory=dict)

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_anndata(
        cls,
        adata,
        *,
        layer: str | None = None,
        perturbation_key: str | None = None,
        control: str | None = None,
        domain_key: str | None = None,
        label_key: str | None = None,
        dose_key: str | None = None,
        library_key: str | None = None,
        categorical_covariate_keys: Sequence[str] | None = None,
        continuous_covariate_keys: Sequence[str] | None = None,
        schema: CellSchema | None = None,
        unknown: Sequence[str] = (),
    ) -> "CellData":
        """Encode an AnnData of raw counts.

        Parameters
        ----------
        adata : anndata.AnnData
            Cells x genes, raw integer counts in ``X`` or in ``layers[layer]``.
        layer : str, optional
            Layer with raw counts (default ``adata.X``).
        perturbation_key : str, optional
            ``obs`` column naming each cell's perturbation; combinations are written ``"A+B"``.
        control : str, optional
            Value of ``perturbation_key`` for unperturbed cells (encoded as all zeros). Without
            it every value is a perturbation.
        domain_key, label_key : str, optional
            ``obs`` columns with technical domains (batch, donor, cell line) and biological
            labels.
        dose_key : str, optional
            Numeric ``obs`` column with each cell's dose.
        library_key : str, optional
            Numeric ``obs`` column with the library size (default: total counts of the cell).
        categorical_covariate_keys, continuous_covariate_keys : sequence of str, optional
            Further ``obs`` columns carried by name (donor, technology, a QC score ...), as in
            scvi-tools: categories are encoded as indices, numbers are standardised with this
            data's mean and standard deviation (kept in the schema). Each becomes an observed
            sample site of that name in models that use covariates.
        schema : CellSchema, optional
            A fitted model's ``data.schema``: encode this AnnData exactly as that data was (same
            keys, gene order and category indices). Keys left as ``None`` are taken from it.
            Genes not in the schema are left out; every schema gene must be present. The data
            may lack some categories (e.g. hold no control cells).
        unknown : sequence of str
            With ``schema``: covariates these cells do not have (``"label"``, ``"domain"``,
            ``"dose"`` or named covariates), e.g. the cell types of new cells that a model is to
            predict. Their columns are not read; the data carries ``None`` for them, so encoding
            (:func:`~pyro_causalcell.infer.latent`) and label posteriors work if the model's
            guide does not need them, while fitting and counterfactuals, which observe them,
            raise a named error.

        Raises
        ------
        DataValidationError
            Missing keys, NaN/inf or negative counts, empty cells or genes, a control value that
            never occurs, categories unseen at fit time, genes differing from ``schema``.
        """
        keys = dict(layer=layer, perturbation_key=perturbation_key, control=control,
                    domain_key=domain_key, label_key=label_key, dose_key=dose_key,
                    library_key=library_key,
                    categorical_covariate_keys=_key_tuple(categorical_covariate_keys),
                    continuous_covariate_keys=_key_tuple(continuous_covariate_keys))
        if schema is not None:
            keys = _keys_from_schema(keys, schema)
        unknown = _unknown_covariates(unknown, keys, schema)
        check_covariate_keys(keys)
        if schema is not None:
            _check_schema_columns(adata.obs, keys, schema, unknown)

        matrix, where = _count_matrix(adata, keys["layer"])
        return cls._encode(adata.obs, [str(g) for g in adata.var_names], matrix, where, keys,
                           schema, unknown)

    @classmethod
    def from_store(cls, path, *, layer: str | None = None, **keys) -> "CellData":
        """Encode an AnnData file (``.h5ad``, or a ``.zarr`` store) without loading its counts.

        ``obs`` and ``var`` are read; the count matrix stays on disk and minibatches read only
        their rows (see :mod:`~pyro_causalcell.data.on_disk`): data larger than memory. Store
        the counts as CSR (AnnData's default for sparse ``X``) or dense, not CSC.

        Parameters
        ----------
        path : str or path
            An ``.h5ad`` file or a zarr directory written by AnnData.
        layer : str, optional
            Layer with raw counts (default ``X``); read from disk like ``X``.
        **keys
            As :meth:`from_anndata` (``perturbation_key``, ``schema``, ...).

        Raises
        ------
        DataValidationError
            As :meth:`from_anndata`, after one streaming pass over the counts; also a path that
            is neither.
        """
        import anndata

        group = _open_store(path)
        obs = anndata.io.read_elem(group["obs"])
        var_names = [str(g) for g in anndata.io.read_elem(group["var"]).index]
        element, where = group["X"] if "X" in group else None, "adata.X"
        if layer is not None:
            layers = group["layers"] if "layers" in group else {}
            if layer not in layers:
                raise DataValidationError(
                    f"layer={layer!r} is not in the layers of {str(path)!r} (layers: "
                    f"{list(layers.keys())}). Pass an existing layer, or layer=None for X.")
            element, where = layers[layer], f"adata.layers[{layer!r}]"
        if element is None:
            raise DataValidationError(f"{str(path)!r} has no X; name the layer that holds raw "
                                      "counts with layer=...")
        return cls.from_anndata(_StoredAnnData(obs, var_names, OnDiskMatrix(element, where)),
                                layer=layer, **keys)

    @classmethod
    def _encode(cls, obs, genes: list[str], matrix, where: str, keys: dict,
                schema: CellSchema | None, unknown: frozenset[str]) -> "CellData":
        """Encode ``obs`` and a count ``matrix`` (in memory, or an :class:`OnDiskMatrix`)."""
        check_unique_genes(genes)
        columns = None
        if schema is not None:
            columns = _gene_order(genes, schema)
            genes = list(schema.genes)
        if len(obs) == 0 or len(genes) == 0:
            raise DataValidationError(f"{where} is empty ({len(obs)} cells x {len(genes)} "
                                      "genes); CellData needs at least one cell and one gene.")
        if isinstance(matrix, OnDiskMatrix):
            scan = matrix.scan(columns)
        else:
            if columns is not None:
                matrix = matrix[:, columns]  # a new array / matrix; the user's data is untouched
            scan = CountScan(np.asarray(matrix.sum(axis=1)).ravel(), None,
                             check_counts(matrix, where))
        if not scan.integer:
            warnings.warn(
                f"{where} holds non-integer values; the count likelihoods expect raw UMI counts. "
                "If this is normalised or log-transformed data, pass the raw counts with "
                "layer=... instead.",
                NonIntegerCountsWarning,
                stacklevel=3,
            )
        cell_totals = scan.cell_totals
        empty_cells = np.flatnonzero(cell_totals == 0)
        if empty_cells.size:
            names = [str(obs.index[i]) for i in empty_cells[:5]]
            raise DataValidationError(
                f"{where} has {empty_cells.size} cells with zero total counts (e.g. {names}); "
                "their library size is 0. Remove them first, e.g. "
                "adata = adata[np.asarray(adata.X.sum(1)).ravel() > 0].copy()"
            )
        if schema is None:
            gene_totals = (scan.gene_totals if scan.gene_totals is not None
                           else np.asarray(matrix.sum(axis=0)).ravel())
            empty_genes = np.flatnonzero(gene_totals == 0)
            if empty_genes.size:
                names = [genes[i] for i in empty_genes[:5]]
                raise DataValidationError(
                    f"{where} has {empty_genes.size} genes with zero counts in every cell "
                    f"(e.g. {names}); a model cannot learn them. Remove them first, e.g. "
                    "adata = adata[:, np.asarray(adata.X.sum(0)).ravel() > 0].copy()"
                )

        fields: dict = {}
        perturbations: tuple[str, ...] = ()
        if keys["perturbation_key"] is not None:
            values = obs_column(obs, keys["perturbation_key"], "perturbation_key")
            perturbations = schema.perturbations if schema is not None else None
            fields["perturbation"], perturbations = _encode_perturbations(
                values.to_numpy(), keys["perturbation_key"], keys["control"], perturbations, obs)
        elif keys["control"] is not None:
            raise DataValidationError("control=... was given without perturbation_key; pass the "
                                      "obs column holding perturbations as perturbation_key.")
        categories = {}
        for name in ("domain", "label"):
            key = keys[f"{name}_key"]
            if key is None:
                categories[name] = ()
                continue
            if name in unknown:
                categories[name] = getattr(schema, f"{name}s")
                continue
            values = obs_column(obs, key, f"{name}_key").to_numpy()
            known = getattr(schema, f"{name}s") if schema is not None else None
            fields[name], categories[name] = encode_categories(values, known, key,
                                                               f"{name}_key")
        covariates, fields["covariates"] = encode_covariates(
            obs, keys["categorical_covariate_keys"], keys["continuous_covariate_keys"], schema,
            unknown)
        if keys["dose_key"] is not None and "dose" not in unknown:
            fields["dose"] = numeric_column(obs, keys["dose_key"], "dose_key")
        if keys["library_key"] is not None:
            library = numeric_column(obs, keys["library_key"], "library_key")
            if (library <= 0).any():
                raise DataValidationError(
                    f"adata.obs[{keys['library_key']!r}] (library_key) has values <= 0; library "
                    "sizes must be positive.")
        else:
            library = torch.as_tensor(cell_totals, dtype=torch.float32)

        new_schema = CellSchema(
            genes=tuple(genes), layer=keys["layer"],
            perturbation_key=keys["perturbation_key"], control=keys["control"],
            perturbations=perturbations, domain_key=keys["domain_key"],
            domains=categories["domain"], label_key=keys["label_key"],
            labels=categories["label"], dose_key=keys["dose_key"],
            library_key=keys["library_key"], covariates=covariates,
        )
        if isinstance(matrix, OnDiskMatrix):
            counts = OnDiskCounts(matrix, columns)
        elif sp.issparse(matrix):
            counts = SparseCounts.from_scipy(matrix)
        else:
            # a copy: the user's array must never share memory with tensors we hand out
            counts = DenseCounts(torch.tensor(np.asarray(matrix, dtype=np.float32)))
        return cls(counts=counts, library=library, schema=new_schema,
                   obs_names=[str(n) for n in obs.index], **fields)

    # ------------------------------------------------------------------ access
    @property
    def n_cells(self) -> int:
        return self.counts.shape[0]

    @property
    def device(self) -> torch.device:
        return self.library.device

    def __len__(self) -> int:
        return self.n_cells

    def to(self, device: torch.device | str) -> "CellData":
        """Copy with every tensor on ``device`` (minibatches are then gathered there)."""
        move = lambda t: None if t is None else t.to(device)  # noqa: E731
        return CellData(counts=self.counts.to(device), library=move(self.library),
                        schema=self.schema, obs_names=self.obs_names,
                        perturbation=move(self.perturbation), dose=move(self.dose),
                        domain=move(self.domain), label=move(self.label),
                        covariates={k: v.to(device) for k, v in self.covariates.items()})

    def batch(self, index: torch.Tensor | Sequence[int], n_cells: int | None = None,
              counts: torch.Tensor | None = None) -> CellBatch:
        """The cells at positions ``index`` as a :class:`CellBatch`.

        Parameters
        ----------
        index : (batch,) long tensor or sequence of int
        n_cells : int, optional
            Size of the ``"cells"`` plate the batch is drawn from (default: all cells).
        counts : (batch, n_genes) tensor, optional
            These cells' counts, already read (a sampler reading blocks from disk).
        """
        index = torch.as_tensor(index, dtype=torch.long, device=self.device)
        pick = lambda t: None if t is None else t.index_select(0, index)  # noqa: E731
        return CellBatch(
            counts=self.counts.rows(index) if counts is None else counts,
            library=pick(self.library), index=index,
            n_cells=self.n_cells if n_cells is None else int(n_cells),
            perturbation=pick(self.perturbation), dose=pick(self.dose),
            domain=pick(self.domain), label=pick(self.label),
            covariates={k: pick(v) for k, v in self.covariates.items()},
        )

    def batches(self, batch_size: int, indices: torch.Tensor | None = None, *,
                shuffle: bool = False,
                generator: torch.Generator | None = None) -> Iterator[CellBatch]:
        """Iterate over minibatches of ``indices`` (default all cells).

        The ``"cells"`` plate size of each batch is ``len(indices)``, so a loss summed over one
        pass estimates the objective on exactly that set of cells.
        """
        if indices is None:
            indices = torch.arange(self.n_cells, device=self.device)
        indices = torch.as_tensor(indices, dtype=torch.long).to(self.device)
        if shuffle:
            order = torch.randperm(len(indices), generator=generator)
            indices = indices.index_select(0, order.to(self.device))
        for start in range(0, len(indices), batch_size):
            yield self.batch(indices[start:start + batch_size], n_cells=len(indices))

    def covariate_values(self, name: str) -> torch.Tensor | None:
        """Per-cell values of covariate ``name`` (``"perturbation"``, ``"domain"``, ``"label"``,
        ``"dose"`` or a named one), or ``None`` when the data does not carry it."""
        if name in ("perturbation", "domain", "label", "dose"):
            return getattr(self, name)
        return self.covariates.get(name)

    def dense_counts(self) -> np.ndarray:
        """All counts as a dense ``(n_cells, n_genes)`` NumPy array (small data only)."""
        return self.counts.rows(torch.arange(self.n_cells, device=self.device)).cpu().numpy()


# ---------------------------------------------------------------------- helpers
def _key_tuple(keys: Sequence[str] | str | None) -> tuple[str, ...] | None:
    if keys is None:
        return None
    return (keys,) if isinstance(keys, str) else tuple(str(k) for k in keys)


def _unknown_covariates(unknown: Sequence[str], keys: dict,
                        schema: CellSchema | None) -> frozenset[str]:
    """Check ``unknown=`` names covariates the schema carries (perturbations cannot be)."""
    unknown = frozenset(_key_tuple(unknown) or ())
    if not unknown:
        return unknown
    if schema is None:
        raise DataValidationError(
            f"unknown={sorted(unknown)} needs schema=...: it marks covariates of a fitted "
            "model's schema that these cells lack. Without a schema, leave their keys unset.")
    allowed = [name for name in schema.carried if name != "perturbation"]
    wrong = sorted(unknown - set(allowed))
    if wrong:
        raise DataValidationError(
            f"unknown={wrong}: the schema carries no such covariate; covariates that can be "
            f"unknown are {allowed}" + (" (perturbations must be known: use "
                                         "pyro_causalcell.transfer for new ones)"
                                         if "perturbation" in wrong else ""))
    return unknown


def _check_schema_columns(obs, keys: dict, schema: CellSchema, unknown: frozenset[str]) -> None:
    """With a schema, a missing covariate column gets an error that offers ``unknown=``."""
    columns = {name: keys.get(f"{name}_key", name) for name in schema.carried}
    for name, column in columns.items():
        if name != "perturbation" and name not in unknown and column not in obs.columns:
            raise DataValidationError(
                f"adata.obs has no column {column!r}, which the fitted schema reads for "
                f"{name!r}. Add it, or, if these cells' {name} is not known (e.g. cell types to "
                f"be predicted), pass CellData.from_anndata(adata, schema=..., "
                f"unknown=[{name!r}]).")


def _keys_from_schema(keys: dict, schema: CellSchema) -> dict:
    merged = {}
    for name, value in keys.items():
        fitted = getattr(schema, name)
        if value is not None and value != fitted:
            raise DataValidationError(
                f"{name}={value!r} differs from the fitted schema's {name}={fitted!r}. Leave "
                f"{name} unset to use the schema's value.")
        merged[name] = fitted
    return merged


class _StoredAnnData:
    """The parts of an AnnData that :meth:`CellData.from_store` reads: obs, var names and the
    count matrix left on disk."""

    def __init__(self, obs, var_names: list[str], matrix: OnDiskMatrix):
        self.obs, self.var_names, self.matrix = obs, var_names, matrix


def _open_store(path):
    """The root group of an ``.h5ad`` file (h5py) or a zarr store, opened read-only."""
    from pathlib import Path

    path = Path(path)
    if not path.exists():
        raise DataValidationError(f"{str(path)!r} does not exist; pass the path of an .h5ad file "
                                  "or a .zarr store written by AnnData.")
    if path.is_dir():
        try:
            import zarr
        except ImportError:
            raise DataValidationError(
                f"{str(path)!r} is a directory (a zarr store?) and zarr is not installed; "
                "install it with pip install 'pyro_causalcell[zarr]'.") from None
        return zarr.open_group(str(path), mode="r")
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise DataValidationError(f"{str(path)!r} is not an HDF5 (.h5ad) file ({error}); pass an "
                                  ".h5ad file or a .zarr store written by AnnData.") from None


def _count_matrix(adata, layer: str | None):
    if isinstance(adata, _StoredAnnData):
        return adata.matrix, adata.matrix.where
    if layer is None:
        if getattr(adata, "isbacked", False):
            if adata.is_view:
                raise DataValidationError(
                    "adata is a subset (view) of a backed AnnData; its counts cannot be read "
                    "from the file row by row. Write the subset to its own file first "
                    "(adata[mask].write_h5ad(path), then anndata.read_h5ad(path, backed='r')), "
                    "or load it into memory with adata[mask].to_memory().")
            return OnDiskMatrix(adata.file["X"], "adata.X"), "adata.X"
        if adata.X is None:
            raise DataValidationError("adata.X is None; put raw counts in adata.X or name the "
                                      "layer that holds them with layer=...")
        return adata.X, "adata.X"
    if layer not in adata.layers:
        raise DataValidationError(
            f"layer={layer!r} is not in adata.layers (layers: {list(adata.layers.keys())}). "
            "Pass an existing layer, or layer=None to use adata.X.")
    return adata.layers[layer], f"adata.layers[{layer!r}]"


def _gene_order(genes: list[str], schema: CellSchema) -> np.ndarray | None:
    """Which column holds each schema gene (``None``: the genes are the schema's, in order)."""
    if genes == list(schema.genes):
        return None
    present = set(genes)
    missing = [g for g in schema.genes if g not in present]
    if missing or len(set(genes)) != len(genes):
        extra = [g for g in genes if g not in set(schema.genes)]
        raise DataValidationError(
            f"adata.var_names differ from the fitted schema's genes: {len(missing)} schema genes "
            f"are missing (e.g. {missing[:5]}), {len(extra)} genes are not in the schema (e.g. "
            f"{extra[:5]}). Subset and order the data as the model expects: "
            "adata = adata[:, list(schema.genes)].copy()")
    position = {g: i for i, g in enumerate(genes)}
    return np.array([position[g] for g in schema.genes])


def _encode_perturbations(values: np.ndarray, key: str, control: str | None,
                          known: tuple[str, ...] | None, obs):
    unique = np.unique(values)
    malformed = [v for v in unique if v != control and not all(
        atom.strip() for atom in str(v).split(COMBINATION_SEPARATOR))]
    if malformed:
        rows = np.isin(values, malformed)
        raise DataValidationError(
            f"adata.obs[{key!r}] (perturbation_key) has values with an empty perturbation name "
            f"{malformed[:5]} in {cell_preview(obs, rows)}; they would be read as control "
            f"cells. Name each perturbation ('A', or 'A{COMBINATION_SEPARATOR}B' for a "
            f"combination), mark unperturbed cells with the control value ({control!r}), or drop "
            "those cells.")
    atoms_of = {value: perturbation_atoms(value, control) for value in unique}
    if known is None and control is not None and control not in atoms_of:
        raise DataValidationError(
            f"control={control!r} never occurs in adata.obs[{key!r}] (perturbation_key); values "
            f"are e.g. {sorted(atoms_of)[:10]}. Pass the value that marks unperturbed cells, or "
            "control=None if there are none.")
    seen = sorted({a for atoms in atoms_of.values() for a in atoms})
    if known is None:
        if control is None:
            _warn_control_like(values, atoms_of, key)
        known = tuple(seen)
    else:
        check_known(np.array(seen, dtype=object), known, key, "perturbation_key")
    column = {p: i for i, p in enumerate(known)}
    codes = np.zeros((len(values), len(known)), dtype=np.float32)
    for value, atoms in atoms_of.items():
        rows = values == value
        for atom in atoms:
            codes[rows, column[atom]] = 1.0
    return torch.as_tensor(codes), known


def _warn_control_like(values: np.ndarray, atoms_of: dict, key: str) -> None:
    """Warn when, without ``control=``, a perturbation is named like unperturbed cells.

    ``atoms_of`` maps each distinct value of ``values`` to the perturbations it names."""
    for name in sorted({atom for atoms in atoms_of.values() for atom in atoms}):
        if name.lower() in CONTROL_LIKE_NAMES:
            with_name = [value for value, atoms in atoms_of.items() if name in atoms]
            n_cells = int(np.isin(values, with_name).sum())
            warnings.warn(
                f"adata.obs[{key!r}] (perturbation_key) holds {name!r} ({n_cells} cells), read as "
                f"a perturbation with effects of its own because control=None. If these cells are "
                f"unperturbed, pass control={name!r}.", ControlLikePerturbationWarning,
                stacklevel=5)  # the caller of CellData.from_anndata
