"""The model protocol module: schema checks, evaluation mode, site classification, seeding."""

from __future__ import annotations

import random

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from torch import nn

from pyro_causalcell import VAE, CellData, sites
from pyro_causalcell.infer.protocol import (CellModel, check_schema, evaluation,
                                            global_latent_sites, model_device,
                                            non_finite_parameters, observed_sites,
                                            per_cell_latent_sites, sample_sites, seeded)
from pyro_causalcell.models import SparseShiftVAE
from pyro_causalcell.simulate import cell_types
from pyro_causalcell.simulate.sparse_shift import sparse_shift


@pytest.fixture(scope="module")
def screen():
    adata = sparse_shift(n_latent=2, n_perturbations=3, n_cells_per_perturbation=10,
                         n_genes=40, n_control_cells=10, seed=0)
    return CellData.from_anndata(adata, perturbation_key="perturbation", control="control")


def test_sites_are_classified(screen):
    torch.manual_seed(0)
    model = SparseShiftVAE(screen.schema, n_latent=2, n_hidden=8)
    batch = screen.batch(torch.arange(6))
    guide = poutine.trace(model.guide).get_trace(batch)
    trace = poutine.trace(poutine.replay(model.model, trace=guide)).get_trace(batch)
    assert per_cell_latent_sites(trace) == [sites.Z]
    assert global_latent_sites(trace) == ["shift", "target_probability"]
    assert observed_sites(trace) == [sites.PERTURBATION, sites.COUNTS]
    assert set(sample_sites(trace)) == {"shift", "target_probability", sites.PERTURBATION,
                                        sites.Z, sites.COUNTS}  # no subsample sites


def test_evaluation_restores_the_mode_even_on_error(screen):
    model = SparseShiftVAE(screen.schema, n_latent=2, n_hidden=8)
    model.train()
    with pytest.raises(RuntimeError):
        with evaluation(model):
            assert not model.training and not model.encoder.training
            raise RuntimeError("inside")
    assert model.training and model.encoder.training
    model.eval()
    with evaluation(model):
        pass
    assert not model.training


def test_seeded_reproduces_inside_and_restores_outside():
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    expected = (random.random(), float(np.random.rand()), float(torch.rand(())))
    random.seed(3), np.random.seed(3), torch.manual_seed(3)
    with seeded(11):
        first = (random.random(), float(np.random.rand()), float(torch.rand(())))
    with seeded(11):
        again = (random.random(), float(np.random.rand()), float(torch.rand(())))
    assert first == again
    assert (random.random(), float(np.random.rand()), float(torch.rand(()))) == expected
    with seeded(None):  # leaves the generators alone
        assert float(torch.rand(())) != first[2]


def test_check_schema_device_and_finite_parameters():
    data = CellData.from_anndata(cell_types(n_cells=30, n_genes=10, seed=0), domain_key="batch")
    other = CellData.from_anndata(cell_types(n_cells=30, n_genes=10, seed=0))
    model = VAE(data.schema, n_latent=2, n_hidden=4)
    check_schema(model, data)
    with pytest.raises(ValueError, match="domain_key: 'batch' vs None"):
        check_schema(model, other)
    assert model_device(model) == torch.device("cpu")
    assert model_device(nn.Module()) == torch.device("cpu")
    assert isinstance(model, CellModel) and not isinstance(nn.Linear(2, 2), CellModel)
    assert non_finite_parameters(model) == []
    with torch.no_grad():
        model.encoder.net.layers[0].weight[0, 0] = float("nan")
    assert non_finite_parameters(model) == ["latent.encoder.net.layers.0.weight"]


def test_a_user_model_written_with_the_constants_is_classified_like_ours(screen):
    def model(batch):
        with pyro.plate(sites.CELLS, batch.n_cells, subsample=batch.index):
            z = pyro.sample(sites.latent_site("inv"), dist.Normal(0.0, 1.0))
            rate = z.exp().unsqueeze(-1).expand(len(batch), 40)
            pyro.sample(sites.COUNTS, dist.Poisson(rate).to_event(1), obs=batch.counts)

    trace = poutine.trace(model).get_trace(screen.batch(torch.arange(4)))
    assert per_cell_latent_sites(trace) == ["z_inv"] and observed_sites(trace) == ["counts"]


def test_auto_device_follows_the_environment_variable(monkeypatch):
    from pyro_causalcell.infer.device import DeviceUnavailableError, resolve_device

    monkeypatch.setenv("CAUSALCELL_DEVICE", "cpu")
    assert resolve_device("auto") == torch.device("cpu")
    monkeypatch.setenv("CAUSALCELL_DEVICE", "tpu-ish")
    with pytest.raises(DeviceUnavailableError, match="'tpu-ish' is not a device torch knows"):
        resolve_device("auto")
    if not torch.cuda.is_available():
        monkeypatch.setenv("CAUSALCELL_DEVICE", "cuda")
        with pytest.raises(DeviceUnavailableError, match="CUDA is not available"):
            resolve_device("auto")
    assert resolve_device("cpu") == torch.device("cpu")  # an explicit choice wins
