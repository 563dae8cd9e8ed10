"""CellData over counts left on disk: backed .h5ad and zarr stores read a few rows at a time."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scipy.sparse as sp
import torch

import pyro_causalcell as pcc
from pyro_causalcell.data import CellData, DataValidationError, RandomSampler
from pyro_causalcell.data import on_disk
from pyro_causalcell.data.prefetch import prefetch

pytestmark = pytest.mark.usefixtures("seeded")

KEYS = dict(perturbation_key="perturbation", control="ctrl", domain_key="domain",
            label_key="label", dose_key="dose")


def written(adata: ad.AnnData, tmp_path, kind: str):
    """``adata`` written to disk and opened as on-disk CellData (``kind``: h5ad, backed or
    zarr)."""
    if kind == "zarr":
        pytest.importorskip("zarr")
        path = tmp_path / "cells.zarr"
        adata.write_zarr(path)
        return CellData.from_store(path, **KEYS)
    path = tmp_path / "cells.h5ad"
    adata.write_h5ad(path)
    if kind == "backed":
        return CellData.from_anndata(ad.read_h5ad(path, backed="r"), **KEYS)
    return CellData.from_store(path, **KEYS)


@pytest.fixture
def big_adata(make_adata):
    """300 cells (sparse) with the fixture's covariates; rows differ from one another."""
    return make_adata(300, sparse=True, seed=3)


@pytest.mark.parametrize("kind", ["h5ad", "backed", "zarr"])
@pytest.mark.parametrize("sparse", [True, False])
def test_on_disk_data_encodes_exactly_as_in_memory(make_adata, tmp_path, kind, sparse):
    adata = make_adata(300, sparse=sparse, seed=3)
    memory = CellData.from_anndata(adata, **KEYS)
    disk = written(adata, tmp_path, kind)
    assert getattr(disk.counts, "on_disk", False)
    assert disk.schema == memory.schema
    assert disk.obs_names == memory.obs_names
    torch.testing.assert_close(disk.library, memory.library)
    for name in ("perturbation", "dose", "domain", "label"):
        torch.testing.assert_close(getattr(disk, name), getattr(memory, name))
    index = torch.tensor([299, 3, 150, 3, 0, 151])  # any order, repeats
    np.testing.assert_array_equal(disk.batch(index).counts.numpy(),
                                  memory.batch(index).counts.numpy())
    torch.testing.assert_close(disk.counts.row_sums(), memory.counts.row_sums())


def test_schema_gene_order_is_applied_to_on_disk_columns(big_adata, tmp_path):
    reference = CellData.from_anndata(big_adata, **KEYS)
    shuffled = big_adata[:, big_adata.var_names[::-1]].copy()
    shuffled.write_h5ad(tmp_path / "reversed.h5ad")
    disk = CellData.from_store(tmp_path / "reversed.h5ad", schema=reference.schema)
    assert disk.schema.genes == reference.schema.genes
    index = torch.arange(0, 300, 7)
    np.testing.assert_array_equal(disk.batch(index).counts.numpy(),
                                  reference.batch(index).counts.numpy())


def test_from_store_reads_a_layer_from_disk(big_adata, tmp_path):
    adata = big_adata.copy()
    adata.layers["raw"] = adata.X.copy()
    adata.X = adata.X * 0.5  # normalised values in X
    adata.write_h5ad(tmp_path / "layers.h5ad")
    disk = CellData.from_store(tmp_path / "layers.h5ad", layer="raw", **KEYS)
    assert isinstance(disk.counts.matrix, on_disk.OnDiskMatrix)
    np.testing.assert_array_equal(disk.dense_counts(), big_adata.X.toarray())
    with pytest.raises(DataValidationError, match=r"layer='missing' is not in the layers"):
        CellData.from_store(tmp_path / "layers.h5ad", layer="missing", **KEYS)


def test_validation_streams_with_the_in_memory_errors(make_adata, tmp_path, monkeypatch):
    """Bad values anywhere in the file give the in-memory message, read in several blocks."""
    adata = make_adata(300, sparse=True, seed=3)
    adata.X = adata.X.astype(np.float32)
    adata.X.data[-1] = -2.0  # in the last block
    adata.X.data[5] = np.nan
    with pytest.raises(DataValidationError) as in_memory:
        CellData.from_anndata(adata, **KEYS)
    adata.write_h5ad(tmp_path / "bad.h5ad")
    original = on_disk.OnDiskMatrix.blocks
    monkeypatch.setattr(on_disk.OnDiskMatrix, "blocks",
                        lambda self, n_values=50: original(self, n_values))
    with pytest.raises(DataValidationError) as streamed:
        CellData.from_store(tmp_path / "bad.h5ad", **KEYS)
    assert str(streamed.value) == str(in_memory.value)
    assert "1 NaN or infinite entries" in str(streamed.value)


def test_empty_cells_and_genes_found_in_one_pass(make_adata, tmp_path):
    adata = make_adata(300, sparse=True, seed=3)
    dense = adata.X.toarray()
    dense[7] = 0
    adata.X = sp.csr_matrix(dense)
    adata.write_h5ad(tmp_path / "empty.h5ad")
    with pytest.raises(DataValidationError, match=r"1 cells with zero total counts.*cell7"):
        CellData.from_store(tmp_path / "empty.h5ad", **KEYS)


def test_bad_stores_get_named_errors(big_adata, tmp_path):
    with pytest.raises(DataValidationError, match="does not exist"):
        CellData.from_store(tmp_path / "nowhere.h5ad")
    (tmp_path / "text.h5ad").write_text("not hdf5")
    with pytest.raises(DataValidationError, match=r"is not an HDF5 \(.h5ad\) file"):
        CellData.from_store(tmp_path / "text.h5ad")
    csc = big_adata.copy()
    csc.X = sp.csc_matrix(csc.X)
    csc.write_h5ad(tmp_path / "csc.h5ad")
    with pytest.raises(DataValidationError, match=r"stored on disk by columns \(CSC\).*tocsr"):
        CellData.from_store(tmp_path / "csc.h5ad", **KEYS)
    big_adata.write_h5ad(tmp_path / "cells.h5ad")
    backed = ad.read_h5ad(tmp_path / "cells.h5ad", backed="r")
    with pytest.raises(DataValidationError, match=r"subset \(view\) of a backed AnnData"):
        CellData.from_anndata(backed[:10], **KEYS)


def test_blockwise_epoch_sees_every_cell_once_and_reads_sequentially(big_adata, tmp_path,
                                                                      monkeypatch):
    disk = written(big_adata, tmp_path, "h5ad")
    memory = CellData.from_anndata(big_adata, **KEYS)
    reads = []
    original = on_disk.OnDiskMatrix.read_rows
    monkeypatch.setattr(on_disk.OnDiskMatrix, "read_rows",
                        lambda self, rows: reads.append(len(rows)) or original(self, rows))
    train = torch.randperm(300, generator=torch.Generator().manual_seed(1))[:250]
    sampler = RandomSampler(chunk_size=16, chunks_per_block=3)
    batches = list(sampler.batches(disk, train, 20, torch.Generator().manual_seed(0)))
    seen = torch.cat([b.index for b in batches])
    assert sorted(seen.tolist()) == sorted(train.tolist())
    assert [len(b) for b in batches] == [20] * 12 + [10]
    assert all(b.n_cells == 250 for b in batches)
    for b in batches:
        np.testing.assert_array_equal(b.counts.numpy(), memory.batch(b.index).counts.numpy())
    assert len(reads) == -(-16 // 3)  # one read per block of chunks: 16 chunks of 250 cells
    # consecutive batches mix cells of several chunks (shuffled within each block)
    assert len(torch.unique(batches[0].index // 16)) > 1
    # the same generator seed gives the same epoch
    again = list(sampler.batches(disk, train, 20, torch.Generator().manual_seed(0)))
    assert all(torch.equal(a.index, b.index) for a, b in zip(batches, again))


def test_prefetch_yields_the_same_items_and_raises_where_drawing_failed():
    assert list(prefetch(iter(range(50)), 3)) == list(range(50))

    def failing():
        yield 1
        raise OSError("disk gone")

    drawn = prefetch(failing(), 2)
    assert next(drawn) == 1
    with pytest.raises(OSError, match="disk gone"):
        next(drawn)
    early = prefetch(iter(range(1000)), 2)
    assert next(early) == 0
    early.close()  # leaving early stops the thread


def test_every_model_query_works_on_disk_data_unchanged(big_adata, tmp_path):
    disk = written(big_adata, tmp_path, "h5ad")
    memory = CellData.from_anndata(big_adata, **KEYS)
    results = {}
    for name, data in (("disk", disk), ("memory", memory)):
        torch.manual_seed(0)
        model = pcc.SparseShiftVAE(data.schema, n_latent=3, n_hidden=16)
        history = pcc.fit(model, data, max_epochs=3, batch_size=32, progress=False, seed=0,
                          sampler=pcc.data.BalancedSampler("domain"))
        results[name] = (history, pcc.latent(model, data),
                         pcc.counterfactual(model, data, do={"perturbation": "KO_a"},
                                            n_samples=2, seed=1).X)
    torch.testing.assert_close(torch.tensor(results["disk"][0].train_elbo),
                               torch.tensor(results["memory"][0].train_elbo))
    torch.testing.assert_close(results["disk"][1], results["memory"][1])
    np.testing.assert_allclose(results["disk"][2], results["memory"][2], rtol=1e-5)


def test_fit_streams_blocks_with_prefetch_and_is_reproducible(big_adata, tmp_path):
    disk = written(big_adata, tmp_path, "h5ad")
    elbos = []
    for prefetch_batches in (0, 2):
        torch.manual_seed(0)
        model = pcc.VAE(disk.schema, n_latent=2, n_hidden=16)
        history = pcc.fit(model, disk, max_epochs=3, batch_size=32, progress=False, seed=0,
                          sampler=RandomSampler(chunk_size=8, chunks_per_block=4),
                          prefetch_batches=prefetch_batches)
        elbos.append(history.train_elbo + history.validation_elbo)
    assert elbos[0] == elbos[1]  # the thread changes nothing but when batches are read
    assert elbos[0][2] > elbos[0][0]  # and it trains
