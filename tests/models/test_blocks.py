"""Latent blocks: priors as small classes, and a user's two-block model that gets fit, latent,
counterfactual and save / load from the engines with no change to them."""

from __future__ import annotations

import numpy as np
import pyro
import pytest
import torch
from pyro import poutine
from torch import nn

from pyro_causalcell import CellData, counterfactual, fit, latent, load, save
from pyro_causalcell.models import (ConditionalNormalPrior, LatentBlock, NormalPrior,
                                    register_model)
from pyro_causalcell.infer.protocol import model_device
from pyro_causalcell.models.components import cells_plate, emit_counts, features, observe_all
from pyro_causalcell.nn import CountDecoder
from pyro_causalcell.simulate import cell_types


# ---------------------------------------------------------------------- the user's model (40 lines)
@register_model(name="TwoBlockTestVAE")
class TwoBlockVAE(nn.Module):
    """z_inv with a prior set by the cell type, z_spur with a prior set by the batch."""

    def __init__(self, schema, n_inv: int = 2, n_spur: int = 2):
        super().__init__()
        self.schema, self.init_args = schema, dict(n_inv=n_inv, n_spur=n_spur)
        self.inv = LatentBlock("inv", schema.n_genes, n_inv, hidden=(32,),
                               prior=ConditionalNormalPrior(schema.n_labels, n_inv))
        self.spur = LatentBlock("spur", schema.n_genes, n_spur, hidden=(32,),
                                prior=ConditionalNormalPrior(schema.n_domains, n_spur,
                                                             mode="mean"))
        self.decoder = CountDecoder(n_inv + n_spur, schema.n_genes, (32,))

    def model(self, batch):
        pyro.module("two_block_vae", self)
        with cells_plate(batch):
            u = observe_all(batch, self.schema)  # "label", "domain": intervenable sites
            z_inv = self.inv.model(batch, features(u, ["label"], self.schema))
            z_spur = self.spur.model(batch, features(u, ["domain"], self.schema))
            emit_counts(self.decoder, torch.cat([z_inv, z_spur], -1), batch)

    def guide(self, batch):
        pyro.module("two_block_vae", self)
        with cells_plate(batch):
            self.inv.guide(batch)
            self.spur.guide(batch)


# ---------------------------------------------------------------------- the engines on it
@pytest.fixture(scope="module")
def fitted():
    adata = cell_types(n_cells=400, n_genes=30, n_cell_types=2, n_batches=2, batch_strength=2.0,
                       seed=3)
    data = CellData.from_anndata(adata, domain_key="batch", label_key="cell_type")
    torch.manual_seed(0)
    model = TwoBlockVAE(data.schema)
    history = fit(model, data, max_epochs=30, lr=3e-3, progress=False, device="cpu")
    return model, data, history


def test_fit_and_latent_per_block(fitted):
    model, data, history = fitted
    assert history.validation_elbo[-1] > history.validation_elbo[0]
    assert latent(model, data, site="z_inv").shape == (data.n_cells, 2)
    assert latent(model, data, site="z_spur").shape == (data.n_cells, 2)


def test_counterfactual_moves_only_the_block_the_intervention_reaches(fitted):
    model, data, _ = fitted
    other = 1 - data.domain
    moved = counterfactual(model, data, {"domain": other}, n_samples=3, batch_size=128)
    same = counterfactual(model, data, {"domain": data.domain}, n_samples=3, batch_size=128)
    assert np.abs(moved.X - same.X).mean() > 1e-3 * np.abs(same.X).mean()
    # the domain enters only z_spur's prior: the abducted z_inv is the same in both worlds
    batch = data.batch(torch.arange(16)).to(model_device(model))
    guide = poutine.trace(model.guide).get_trace(batch)
    to_other = pyro.do(model.model, data={"domain": 1 - batch.domain})
    intervened = poutine.trace(poutine.replay(to_other, trace=guide)).get_trace(batch)
    assert torch.equal(intervened.nodes["z_inv"]["value"], guide.nodes["z_inv"]["value"])


def test_save_and_load_round_trip(fitted, tmp_path):
    model, data, _ = fitted
    restored = load(save(model, tmp_path / "two_block.pt"), data)
    assert type(restored) is TwoBlockVAE
    np.testing.assert_allclose(latent(restored, data, site="z_spur"),
                               latent(model, data, site="z_spur"), rtol=1e-5, atol=1e-6)


# ---------------------------------------------------------------------- the priors
def test_priors_set_what_their_mode_says():
    u = torch.eye(3)
    like = torch.zeros(3)
    torch.manual_seed(0)
    variance = ConditionalNormalPrior(3, 2, mode="variance")(u, 3, like)
    assert torch.equal(variance.base_dist.loc, torch.zeros(3, 2))
    assert not torch.allclose(variance.base_dist.scale[0], variance.base_dist.scale[1])
    mean = ConditionalNormalPrior(3, 2, mode="mean")(u, 3, like)
    assert torch.equal(mean.base_dist.scale, torch.ones(3, 2))
    both = ConditionalNormalPrior(3, 2, hidden=(8,), mode="both")(u, 3, like)
    assert both.batch_shape == (3,) and both.event_shape == (2,)
    standard = NormalPrior(4)(None, 5, like)
    assert standard.batch_shape == (5,) and standard.event_shape == (4,)
    with pytest.raises(ValueError, match="mode='median'; choose one of"):
        ConditionalNormalPrior(3, 2, mode="median")
    with pytest.raises(ValueError, match="use NormalPrior for a block no covariate informs"):
        ConditionalNormalPrior(0, 2)
