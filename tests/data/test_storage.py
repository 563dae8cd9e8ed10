"""Sparse storage: both row-gathering paths (SciPy on CPU, tensor ops for GPUs) are exact."""

from __future__ import annotations

import numpy as np
import scipy.sparse as sp
import torch

from pyro_causalcell.data import SparseCounts


def random_csr(seed=0):
    rng = np.random.default_rng(seed)
    dense = rng.poisson(0.7, size=(40, 17)).astype(np.float32)
    dense[5] = 0  # an empty row
    return sp.csr_matrix(dense), dense


def test_scipy_and_tensor_paths_give_the_dense_rows():
    csr, dense = random_csr()
    index = torch.tensor([5, 0, 39, 5, 12])  # repeats and an empty row
    cpu = SparseCounts.from_scipy(csr)
    tensor_path = SparseCounts(cpu.indptr, cpu.indices, cpu.values, cpu.shape)
    tensor_path._csr = None  # what a GPU copy uses
    for storage in (cpu, tensor_path):
        np.testing.assert_array_equal(storage.rows(index).numpy(), dense[index.numpy()])
    np.testing.assert_array_equal(tensor_path.rows(torch.tensor([5])).numpy(), dense[[5]])
    np.testing.assert_array_equal(cpu.row_sums().numpy(), dense.sum(1))


def test_to_keeps_the_values():
    csr, dense = random_csr(1)
    moved = SparseCounts.from_scipy(csr).to("cpu")
    np.testing.assert_array_equal(moved.rows(torch.arange(40)).numpy(), dense)
