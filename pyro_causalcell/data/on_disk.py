"""Count matrices left on disk (backed ``.h5ad``, zarr) and read a few rows at a time.

A matrix stored as CSR (AnnData's ``"csr_matrix"`` encoding) or as a dense array, in an HDF5
file or a zarr store, is read only where a minibatch needs it: the requested rows are sorted,
runs of nearby rows are merged, and each run is one contiguous read. Samplers read whole blocks
of consecutive cells at once (:meth:`OnDiskCounts.load`), so an epoch reads the file about once,
sequentially.
"""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import scipy.sparse as sp
import torch

from .storage import DenseCounts, SparseCounts
from .validation import CountCheck, DataValidationError

__all__ = ["OnDiskMatrix", "OnDiskCounts", "CountScan"]

#: rows apart by at most this many stored values are read in one piece (the values between
#: them are read and dropped): one read of 256 KiB costs less than two reads
MERGE_GAP = 1 << 16


class CountScan:
    """What one streaming pass over a count matrix found.

    Attributes
    ----------
    cell_totals : (n_cells,) float64 array
    gene_totals : (n_genes,) float64 array
    integer : bool
        Every count is a whole number.
    """

    def __init__(self, cell_totals: np.ndarray, gene_totals: np.ndarray, integer: bool):
        self.cell_totals, self.gene_totals, self.integer = cell_totals, gene_totals, integer


class OnDiskMatrix:
    """A ``(n_cells, n_genes)`` count matrix in an open HDF5 file or zarr store.

    Parameters
    ----------
    element : h5py / zarr group (CSR) or array (dense)
        AnnData's on-disk encoding of ``X`` or of a layer.
    where : str
        How the user names the matrix in error messages (``"adata.X"``).

    Raises
    ------
    DataValidationError
        A CSC matrix (rows cannot be read without reading everything) or an unknown encoding.
    """

    def __init__(self, element, where: str):
        self.where = where
        encoding = str(dict(element.attrs).get("encoding-type", "array"))
        if hasattr(element, "shape") and encoding == "array":
            self.csr, self.dense = None, element
            self.shape = tuple(int(n) for n in element.shape)
            self.indptr = None
        elif encoding == "csr_matrix":
            self.dense = None
            self.csr = (element["data"], element["indices"])
            self.shape = tuple(int(n) for n in element.attrs["shape"])
            self.indptr = np.asarray(element["indptr"][:], dtype=np.int64)
        elif encoding == "csc_matrix":
            raise DataValidationError(
                f"{where} is stored on disk by columns (CSC); cells can only be read a few at a "
                "time from rows (CSR). Convert it once: adata = anndata.read_h5ad(path); "
                "adata.X = adata.X.tocsr(); adata.write_h5ad(path).")
        else:
            raise DataValidationError(f"{where} has the on-disk encoding {encoding!r}; expected "
                                      "a dense array or a 'csr_matrix'.")
        if len(self.shape) != 2:
            raise DataValidationError(f"{where} has shape {self.shape}; expected cells x genes.")

    @property
    def nnz(self) -> int:
        """Stored values (all entries of a dense matrix)."""
        return int(self.indptr[-1]) if self.indptr is not None else self.shape[0] * self.shape[1]

    def read_rows(self, rows: np.ndarray):
        """The rows ``rows`` (sorted, distinct) as a CSR matrix or a dense array, in that order.

        Runs of rows less than :data:`MERGE_GAP` stored values apart are read in one piece.
        """
        rows = np.asarray(rows, dtype=np.int64)
        if self.dense is not None:
            width = max(1, MERGE_GAP // max(self.shape[1], 1))
            pieces = [np.asarray(self.dense[start:stop])[rows[a:b] - start]
                      for a, b, start, stop in _runs(rows, rows, rows + 1, width)]
            return np.concatenate(pieces) if pieces else np.zeros((0, self.shape[1]))
        starts, stops = self.indptr[rows], self.indptr[rows + 1]
        lengths = stops - starts
        data, indices = [], []
        for a, b, start, stop in _runs(rows, starts, stops, MERGE_GAP):
            keep = _positions(starts[a:b] - start, lengths[a:b])
            data.append(np.asarray(self.csr[0][start:stop])[keep])
            indices.append(np.asarray(self.csr[1][start:stop])[keep])
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        empty = np.zeros(0)
        return sp.csr_matrix((np.concatenate(data) if data else empty,
                              np.concatenate(indices) if indices else empty.astype(np.int64),
                              indptr), shape=(len(rows), self.shape[1]))

    def blocks(self, n_values: int = 1 << 22) -> Iterator[tuple[int, object]]:
        """``(first_row, block)`` over the whole matrix in consecutive blocks of about
        ``n_values`` stored values each: one sequential pass."""
        n_rows = self.shape[0]
        first = 0
        while first < n_rows:
            if self.indptr is None:
                last = min(n_rows, first + max(1, n_values // max(self.shape[1], 1)))
            else:
                limit = self.indptr[first] + n_values
                last = int(np.searchsorted(self.indptr, limit, side="right")) - 1
                last = min(n_rows, max(last, first + 1))
            yield first, self.read_rows(np.arange(first, last))
            first = last

    def scan(self, columns: np.ndarray | None = None) -> CountScan:
        """Validate every stored value (the in-memory checks and messages) and sum cells and
        genes, in one sequential pass.

        Parameters
        ----------
        columns : int array, optional
            Check and sum only these columns, in this order (a fitted schema's genes).

        Raises
        ------
        DataValidationError
            As :func:`~pyro_causalcell.data.validation.check_counts`.
        """
        check = CountCheck()
        cell_totals = np.zeros(self.shape[0])
        gene_totals = np.zeros(self.shape[1] if columns is None else len(columns))
        for first, block in self.blocks():
            if columns is not None:
                block = block[:, columns]
            values = block.data if sp.issparse(block) else block
            check.add(values)
            if check.non_finite or check.negative or check.too_large:
                break  # reported below; no need to read further
            cell_totals[first:first + block.shape[0]] = np.asarray(block.sum(axis=1)).ravel()
            gene_totals += np.asarray(block.sum(axis=0), dtype=np.float64).ravel()
        return CountScan(cell_totals, gene_totals, check.result(self.where))


class OnDiskCounts:
    """Counts left on disk, behaving as :class:`~pyro_causalcell.data.storage.SparseCounts`.

    Parameters
    ----------
    matrix : OnDiskMatrix
    columns : (n_genes,) int array, optional
        Which stored column is each gene (a fitted schema's gene order); default all, in order.
    """

    on_disk = True

    def __init__(self, matrix: OnDiskMatrix, columns: np.ndarray | None = None):
        self.matrix, self.columns = matrix, columns
        n_genes = matrix.shape[1] if columns is None else len(columns)
        self._shape = (matrix.shape[0], n_genes)

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    @property
    def nbytes(self) -> int:
        """Bytes held in memory: the row pointers only."""
        return 0 if self.matrix.indptr is None else self.matrix.indptr.nbytes

    def load(self, index: torch.Tensor) -> SparseCounts | DenseCounts:
        """The cells ``index`` (any order) read into memory, as rows ``0..len(index)-1``."""
        index = np.asarray(index.cpu() if isinstance(index, torch.Tensor) else index)
        rows, inverse = np.unique(index, return_inverse=True)
        block = self.matrix.read_rows(rows)
        if self.columns is not None:
            block = block[:, self.columns]
        if sp.issparse(block):
            return SparseCounts.from_scipy(block[inverse])
        return DenseCounts(torch.as_tensor(np.asarray(block[inverse], dtype=np.float32)))

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """Dense ``(len(index), n_genes)`` counts of the given cells, read from disk."""
        block = self.load(index)
        return block.rows(torch.arange(len(index)))

    def row_sums(self) -> torch.Tensor:
        """Total counts per cell, from one pass over the file (:meth:`OnDiskMatrix.scan`)."""
        totals = self.matrix.scan(self.columns).cell_totals
        return torch.as_tensor(totals, dtype=torch.float32)

    def to(self, device: torch.device | str) -> "OnDiskCounts":
        """Counts stay on disk; minibatches are read on the CPU and copied to ``device``."""
        return self


def _runs(rows: np.ndarray, starts: np.ndarray, stops: np.ndarray, gap: int):
    """``(a, b, start, stop)`` for each run ``rows[a:b]`` whose consecutive members are at most
    ``gap`` apart (``starts[i+1] - stops[i]``), read as ``[start, stop)``."""
    if len(rows) == 0:
        return
    breaks = np.flatnonzero(starts[1:] - stops[:-1] > gap) + 1
    edges = np.concatenate([[0], breaks, [len(rows)]])
    for a, b in zip(edges[:-1], edges[1:]):
        yield int(a), int(b), int(starts[a]), int(stops[b - 1])


def _positions(offsets: np.ndarray, lengths: np.ndarray) -> np.ndarray:
    """Concatenated ``arange(offset, offset + length)`` for each pair, vectorised."""
    total = int(lengths.sum())
    if total == 0:
        return np.zeros(0, dtype=np.int64)
    first = np.cumsum(lengths) - lengths
    return np.arange(total) + np.repeat(offsets - first, lengths)
