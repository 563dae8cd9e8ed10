"""No training step waits on the device except to read its loss.

On a GPU, a tensor read on the host (``.item()``, ``bool(t)``, ``int(t)``, a boolean mask,
``nonzero``, ``torch.unique`` ...) stops the CPU until every queued kernel has run. The
detector below fails on those operations on any device, so the check runs on the CPU too;
on CUDA, ``torch.cuda.set_sync_debug_mode("error")`` checks the real thing besides.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch.overrides import TorchFunctionMode

import pyro_causalcell as pcc
from pyro_causalcell.data import CellData
from pyro_causalcell.distributions import nb_log_prob
from pyro_causalcell.infer.elbo import DeviceTraceELBO
from pyro_causalcell.infer.steps import TrainingStep

pytestmark = pytest.mark.usefixtures("seeded")

#: operations whose result is read on the host (or whose size depends on values)
SYNCING = {torch.Tensor.item, torch.Tensor.tolist, torch.Tensor.__bool__, torch.Tensor.__int__,
           torch.Tensor.__float__, torch.Tensor.__index__, torch.Tensor.nonzero, torch.nonzero,
           torch.Tensor.cpu, torch.Tensor.numpy, torch.unique, torch.Tensor.unique,
           torch._unique2, torch.unique_consecutive, torch.masked_select,
           torch.Tensor.masked_select, torch.argwhere}


class HostSyncDetector(TorchFunctionMode):
    """Record every operation that would make the host wait for a GPU."""

    def __init__(self):
        super().__init__()
        self.found: list[str] = []

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        what = None
        if func in SYNCING:
            what = func.__name__
        elif func is torch.Tensor.__getitem__ and _has_mask(args[1]):
            what = "boolean mask indexing"
        elif func in (torch.repeat_interleave, torch.Tensor.repeat_interleave) and \
                "output_size" not in kwargs:
            what = "repeat_interleave without output_size"
        if what is not None:
            self.found.append(f"{what} at {_caller()}")
        return func(*args, **kwargs)


def _caller() -> str:
    """``file:line`` of the innermost frame outside torch."""
    frame = sys._getframe(2)
    while frame is not None and "/torch/" in frame.f_code.co_filename:
        frame = frame.f_back
    if frame is None:
        return "?"
    return f"{Path(frame.f_code.co_filename).name}:{frame.f_lineno}"


def _has_mask(index) -> bool:
    items = index if isinstance(index, tuple) else (index,)
    return any(isinstance(i, torch.Tensor) and i.dtype == torch.bool for i in items)


@pytest.fixture
def data(make_adata) -> CellData:
    """300 cells with perturbations (and a combination), domains, labels and doses."""
    return CellData.from_anndata(make_adata(300, sparse=True, seed=3),
                                 perturbation_key="perturbation", control="ctrl",
                                 domain_key="domain", label_key="label", dose_key="dose")


MODELS = {
    "VAE": lambda d: pcc.VAE(d.schema, n_latent=3, n_hidden=16),
    "sVAE+": lambda d: pcc.SparseShiftVAE(d.schema, n_latent=3, n_hidden=16),
    "iVAE": lambda d: pcc.SparseShiftVAE(d.schema, n_latent=3, n_hidden=16, sparsity="ivae"),
    "sVAE": lambda d: pcc.SparseShiftVAE(d.schema, n_latent=3, n_hidden=16, sparsity="svae"),
    "InVAE": lambda d: pcc.InVAE(d.schema, n_latent_inv=2, n_latent_spur=2, n_hidden=16),
    "MultiGroupVI": lambda d: pcc.MultiGroupVI(d.schema, n_latent_shared=2, n_latent_private=2,
                                               n_hidden=16),
    "HSICVAE": lambda d: pcc.HSICVAE(d.schema, n_latent=3, n_hidden=16),
    "FCR": lambda d: pcc.FCR(d.schema, n_latent_x=2, n_latent_t=2, n_latent_tx=2, n_hidden=16),
    "LORD": lambda d: pcc.LORD(d.schema, n_latent_class=2, n_latent_content=2, n_hidden=16),
}


def steps_found(model, data: CellData, n_steps: int = 3) -> tuple[list[str], int]:
    """Host reads seen in training steps after the first (which validates), as ``fit`` runs
    them (``prepare_fit``, the default ELBO), with the GPU's choice of NB formula."""
    if hasattr(model, "prepare_fit"):
        model.prepare_fit(data, torch.arange(data.n_cells))
    step = TrainingStep(model, elbo=DeviceTraceELBO(), lr=1e-3,
                        adversaries=getattr(model, "adversaries", lambda: ())())
    step.start_epoch(0, 1.0)
    batches = data.batches(64, shuffle=True, generator=torch.Generator().manual_seed(0))
    first = next(batches)
    step(first, validate=True)
    detector = HostSyncDetector()
    loss_reads = 0
    for batch, _ in zip(batches, range(n_steps)):
        with detector:
            step(batch)
        loss_reads += 1
    return detector.found, loss_reads


@pytest.fixture(autouse=True)
def gpu_formulas(monkeypatch):
    """The formulas a GPU runs (the NB tables are for the CPU only)."""
    monkeypatch.setattr(nb_log_prob, "TABLE_DEVICES", ())


@pytest.mark.parametrize("name", sorted(MODELS))
def test_a_training_step_reads_only_its_loss(name, data):
    found, steps = steps_found(MODELS[name](data), data)
    loss_read = "item at steps.py"
    assert [f for f in found if not f.startswith(loss_read)] == [], found
    assert len(found) == steps
