"""Real public data through the data layer (and one short fit).

The files live beside the project, in ``../shared/data`` from the repository root; set
``CAUSALCELL_DATA_DIR`` to use another folder. Tests skip cleanly when a file is absent.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
import torch

from pyro_causalcell import VAE, CellData, fit, latent
from pyro_causalcell.data import SparseCounts

REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = Path(os.environ.get("CAUSALCELL_DATA_DIR", REPO_ROOT.parent / "shared" / "data"))
PAPALEXI = "papalexi2021_eccite_thp1_sceptre.h5ad"
KANG = "kang2018_ifnb_muscat_example.h5ad"

if not DATA_DIR.is_dir():
    pytest.skip(f"no data folder at {DATA_DIR} (set CAUSALCELL_DATA_DIR)", allow_module_level=True)

pytestmark = [pytest.mark.slow, pytest.mark.usefixtures("seeded")]


def read(name: str) -> ad.AnnData:
    path = DATA_DIR / name
    if not path.is_file():
        pytest.skip(f"{path} is absent")
    return ad.read_h5ad(path)


# ---------------------------------------------------------------------- unchanged AnnData
def snapshot(adata: ad.AnnData) -> dict:
    return {
        "X": adata.X.copy(),
        "obs": adata.obs.copy(deep=True),
        "var": adata.var.copy(deep=True),
        "uns": copy.deepcopy(dict(adata.uns)),
        "obsm": {k: v.copy() for k, v in adata.obsm.items()},
        "layers": list(adata.layers.keys()),
    }


def assert_same(now, before, where: str = "") -> None:
    if isinstance(before, dict):
        assert set(now) == set(before), where
        for key in before:
            assert_same(now[key], before[key], f"{where}[{key!r}]")
    elif isinstance(before, pd.DataFrame):
        pd.testing.assert_frame_equal(now, before)
    elif sp.issparse(before):
        assert type(now) is type(before) and now.dtype == before.dtype, where
        for attr in ("indptr", "indices", "data"):
            np.testing.assert_array_equal(getattr(now, attr), getattr(before, attr), where)
    elif isinstance(before, np.ndarray):
        assert now.dtype == before.dtype, where
        np.testing.assert_array_equal(now, before, where)
    else:
        assert now == before, where


def assert_unchanged(adata: ad.AnnData, snap: dict) -> None:
    assert_same(snapshot(adata), snap)


# ---------------------------------------------------------------------- Papalexi (CRISPR KO)
@pytest.fixture(scope="module")
def papalexi():
    adata = read(PAPALEXI)
    return adata[adata.obs["perturbation"] != "unassigned"].copy()


@pytest.fixture(scope="module")
def papalexi_encoded(papalexi):
    snap = snapshot(papalexi)
    data = CellData.from_anndata(papalexi, perturbation_key="perturbation", control="control",
                                 domain_key="bio_rep", library_key="n_umis_whole_transcriptome")
    return data, snap


def test_papalexi_encodes_every_target_and_control_as_zeros(papalexi, papalexi_encoded):
    data, _ = papalexi_encoded
    values = papalexi.obs["perturbation"].astype(str).to_numpy()
    targets = sorted(set(values) - {"control"})
    assert "unassigned" not in set(values)
    # The data README says 26 target genes; the file's `perturbation` column holds 25 targets
    # besides `control` and `unassigned` (27 categories in all).
    assert len(targets) == 25
    assert data.schema.perturbations == tuple(targets)
    assert data.perturbation.shape == (papalexi.n_obs, 25)

    control = torch.as_tensor(values == "control")
    assert int(control.sum()) == 2241
    assert (data.perturbation[control] == 0).all()
    others = data.perturbation[~control]
    assert torch.equal(others.sum(1), torch.ones(len(others)))  # one target per cell
    chosen = np.array(data.schema.perturbations)[others.argmax(1).numpy()]
    np.testing.assert_array_equal(chosen, values[~control.numpy()])


def test_papalexi_keeps_counts_sparse_and_uses_the_library_column(papalexi, papalexi_encoded):
    data, _ = papalexi_encoded
    assert data.n_cells == papalexi.n_obs == 19351
    assert data.schema.n_genes == 299
    assert isinstance(data.counts, SparseCounts)
    assert data.counts.values.numel() == papalexi.X.nnz
    np.testing.assert_array_equal(data.library.numpy(),
                                  papalexi.obs["n_umis_whole_transcriptome"].to_numpy(np.float32))
    # whole-transcriptome library sizes exceed the 299-gene totals
    assert (data.library > data.counts.row_sums()).all()
    rows = torch.tensor([0, 17, 5000, 19350])
    np.testing.assert_array_equal(data.counts.rows(rows).numpy(),
                                  papalexi.X[rows.numpy()].toarray())
    assert data.schema.domains == ("rep_1", "rep_2", "rep_3")
    np.testing.assert_array_equal(np.array(data.schema.domains)[data.domain.numpy()],
                                  papalexi.obs["bio_rep"].astype(str).to_numpy())


def test_papalexi_anndata_is_unchanged(papalexi, papalexi_encoded):
    _, snap = papalexi_encoded
    assert_unchanged(papalexi, snap)


# ---------------------------------------------------------------------- Kang (IFN-beta)
@pytest.fixture(scope="module")
def kang():
    return read(KANG)


KANG_KEYS = dict(perturbation_key="condition", control="ctrl", domain_key="sample_id",
                 label_key="cell_type")


def test_kang_encodes_condition_samples_and_cell_types(kang):
    snap = snapshot(kang)
    data = CellData.from_anndata(kang, **KANG_KEYS)
    assert data.n_cells == kang.n_obs and data.schema.n_genes == kang.n_vars
    assert data.schema.perturbations == ("stim",)
    stim = kang.obs["condition"].astype(str).to_numpy() == "stim"
    np.testing.assert_array_equal(data.perturbation[:, 0].numpy(), stim.astype(np.float32))
    assert data.schema.domains == ("ctrl101", "ctrl107", "stim101", "stim107")
    assert len(data.schema.labels) == 5 and "CD14+ Monocytes" in data.schema.labels
    np.testing.assert_array_equal(np.array(data.schema.labels)[data.label.numpy()],
                                  kang.obs["cell_type"].astype(str).to_numpy())
    assert isinstance(data.counts, SparseCounts)
    np.testing.assert_array_equal(data.library.numpy(),
                                  np.asarray(kang.X.sum(1), dtype=np.float32).ravel())
    assert_unchanged(kang, snap)


def test_vae_fits_one_epoch_on_a_kang_subset(kang):
    snap = snapshot(kang)
    rng = np.random.default_rng(0)
    cells = np.sort(rng.choice(kang.n_obs, size=500, replace=False))
    subset = kang[cells].copy()
    subset = subset[:, np.asarray(subset.X.sum(0)).ravel() > 0].copy()
    data = CellData.from_anndata(subset, **KANG_KEYS)
    assert data.n_cells == 500 and data.schema.n_domains == 4

    torch.manual_seed(0)
    model = VAE(data.schema, n_latent=5, n_hidden=32)
    history = fit(model, data, max_epochs=1, batch_size=128, progress=False, device="cpu")
    assert history.n_epochs == 1
    assert math.isfinite(history.train_elbo[0]) and history.train_elbo[0] < 0
    assert math.isfinite(history.validation_elbo[0]) and history.validation_elbo[0] < 0
    z = latent(model, data)
    assert z.shape == (500, 5) and np.isfinite(z).all()
    assert_unchanged(kang, snap)
