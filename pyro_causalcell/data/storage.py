"""Count matrices held as dense or CSR tensors, densified one minibatch at a time."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch


class DenseCounts:
    """Counts held as one dense ``(n_cells, n_genes)`` float32 tensor."""

    def __init__(self, values: torch.Tensor):
        self.values = values

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.values.shape)

    @property
    def nbytes(self) -> int:
        return self.values.numel() * self.values.element_size()

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """Dense ``(len(index), n_genes)`` counts of the given cells."""
        return self.values.index_select(0, index)

    def row_sums(self) -> torch.Tensor:
        return self.values.sum(1)

    def to(self, device: torch.device | str) -> "DenseCounts":
        return DenseCounts(self.values.to(device))


class SparseCounts:
    """Counts held in CSR form (row pointers, column indices, values) on any device.

    Rows are gathered and densified per minibatch on the device that holds them, so a sparse
    matrix never has to fit densely in memory.
    """

    def __init__(self, indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor,
                 shape: tuple[int, int]):
        self.indptr, self.indices, self.values = indptr, indices, values
        self._shape = (int(shape[0]), int(shape[1]))

    @classmethod
    def from_scipy(cls, matrix: sp.spmatrix) -> "SparseCounts":
        csr = sp.csr_matrix(matrix, copy=True)  # never reorder the user's own arrays
        csr.sum_duplicates()  # also sorts the indices
        return cls(
            torch.as_tensor(csr.indptr.astype(np.int64)),
            torch.as_tensor(csr.indices.astype(np.int64)),
            torch.as_tensor(csr.data.astype(np.float32)),
            csr.shape,
        )

    @property
    def shape(self) -> tuple[int, int]:
        return self._shape

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in (self.indptr, self.indices, self.values))

    def rows(self, index: torch.Tensor) -> torch.Tensor:
        """Dense ``(len(index), n_genes)`` counts of the given cells."""
        starts = self.indptr.index_select(0, index)
        lengths = self.indptr.index_select(0, index + 1) - starts
        total = int(lengths.sum())
        out = torch.zeros(len(index), self._shape[1], dtype=self.values.dtype,
                          device=self.values.device)
        if total == 0:
            return out
        row = torch.repeat_interleave(torch.arange(len(index), device=index.device), lengths,
                                      output_size=total)
        # position of each stored entry: its row's start plus its offset within the row
        first_of_row = torch.cumsum(lengths, 0) - lengths
        offset = torch.arange(total, device=index.device) - first_of_row.index_select(0, row)
        entry = starts.index_select(0, row) + offset
        out[row, self.indices.index_select(0, entry)] = self.values.index_select(0, entry)
        return out

    def row_sums(self) -> torch.Tensor:
        n = self._shape[0]
        row = torch.repeat_interleave(torch.arange(n, device=self.values.device),
                                      self.indptr[1:] - self.indptr[:-1])
        return torch.zeros(n, dtype=self.values.dtype, device=self.values.device).index_add_(
            0, row, self.values)

    def to(self, device: torch.device | str) -> "SparseCounts":
        return SparseCounts(self.indptr.to(device), self.indices.to(device),
                            self.values.to(device), self._shape)
