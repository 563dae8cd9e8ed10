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
    """Counts held in CSR form, densified one minibatch at a time.

    On the CPU rows are sliced by SciPy's compiled CSR indexing; on a GPU the CSR arrays live on
    the device and rows are gathered there with a few vectorised tensor operations, so a sparse
    matrix never has to fit densely in memory and no minibatch crosses the bus.
    """

    def __init__(self, indptr: torch.Tensor, indices: torch.Tensor, values: torch.Tensor,
                 shape: tuple[int, int]):
        self.indptr, self.indices, self.values = indptr, indices, values
        self._shape = (int(shape[0]), int(shape[1]))
        self._csr = None
        if values.device.type == "cpu":  # shares memory with the tensors above
            self._csr = sp.csr_matrix((values.numpy(), indices.numpy(), indptr.numpy()),
                                      shape=self._shape)

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
        if self._csr is not None:
            return torch.from_numpy(self._csr[index.numpy()].toarray())
        n_rows, n_genes = len(index), self._shape[1]
        starts = self.indptr.index_select(0, index)
        lengths = self.indptr.index_select(0, index + 1) - starts
        total = int(lengths.sum())
        out = torch.zeros(n_rows * n_genes, dtype=self.values.dtype, device=self.values.device)
        if total:
            # for each stored entry: (its position in the CSR arrays - its rank in the batch,
            # the flat offset of its output row), repeated over the entries of each row
            first_of_row = torch.cumsum(lengths, 0) - lengths
            per_row = torch.stack([starts - first_of_row,
                                   torch.arange(n_rows, device=index.device) * n_genes])
            per_entry = torch.repeat_interleave(per_row, lengths, dim=1, output_size=total)
            entry = torch.arange(total, device=index.device) + per_entry[0]
            out.index_copy_(0, per_entry[1] + self.indices.index_select(0, entry),
                            self.values.index_select(0, entry))
        return out.view(n_rows, n_genes)

    def row_sums(self) -> torch.Tensor:
        n = self._shape[0]
        row = torch.repeat_interleave(torch.arange(n, device=self.values.device),
                                      self.indptr[1:] - self.indptr[:-1])
        return torch.zeros(n, dtype=self.values.dtype, device=self.values.device).index_add_(
            0, row, self.values)

    def to(self, device: torch.device | str) -> "SparseCounts":
        return SparseCounts(self.indptr.to(device), self.indices.to(device),
                            self.values.to(device), self._shape)
