"""Samplers: balanced and within-group minibatches, stratified validation, and a cells-plate
scale that keeps the minibatch ELBO unbiased for every sampler."""

from __future__ import annotations

import numpy as np
import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro.infer import Trace_ELBO
from torch import nn

from pyro_causalcell import (BalancedSampler, CellData, RandomSampler, VAE, WithinGroupSampler,
                             fit)
from pyro_causalcell.data.samplers import group_codes, stratified_split
from pyro_causalcell.models.components import cells_plate
from pyro_causalcell.simulate import cell_types


@pytest.fixture(scope="module")
def data() -> CellData:
    # unequal groups: cell types drawn with unequal weights, two batches
    adata = cell_types(n_cells=180, n_genes=20, n_cell_types=3, seed=4)
    keep = np.flatnonzero((adata.obs["cell_type"].cat.codes.to_numpy() != 0)
                          | (np.arange(180) % 4 == 0))
    return CellData.from_anndata(adata[keep].copy(), domain_key="batch", label_key="cell_type")


def epoch(sampler, data, batch_size, seed=0):
    generator = torch.Generator().manual_seed(seed)
    return list(sampler.batches(data, torch.arange(data.n_cells), batch_size, generator))


def test_balanced_batches_hold_every_group_equally(data):
    sizes = data.label.bincount()
    assert sizes.min() < sizes.max() / 2  # the groups really are unequal
    batches = epoch(BalancedSampler("label"), data, 30)
    assert len(batches) == -(-data.n_cells // 30)
    for batch in batches:
        assert batch.label.bincount(minlength=3).tolist() == [10, 10, 10]
        assert batch.n_cells == data.n_cells
        expected = 3 * sizes[batch.label].float() / data.n_cells
        torch.testing.assert_close(batch.weight, expected)


def test_within_group_batches_hold_one_group_and_every_cell_once(data):
    batches = epoch(WithinGroupSampler(["domain", "label"]), data, 16)
    seen = torch.cat([b.index for b in batches])
    assert sorted(seen.tolist()) == list(range(data.n_cells))
    for batch in batches:
        assert len(torch.unique(batch.domain)) == 1 and len(torch.unique(batch.label)) == 1
        assert batch.weight is None and len(batch) <= 16


class PoissonRates(nn.Module):
    """No latents: the minibatch loss is a deterministic function of which cells are drawn."""

    def __init__(self, n_genes):
        super().__init__()
        self.log_rate = nn.Parameter(torch.linspace(-1.0, 2.0, n_genes))

    def model(self, batch):
        with cells_plate(batch):
            rate = self.log_rate.exp().expand(len(batch), -1)
            pyro.sample("counts", dist.Poisson(rate).to_event(1), obs=batch.counts)

    def guide(self, batch):
        pass


@pytest.mark.parametrize("sampler", [RandomSampler(), BalancedSampler("label"),
                                     WithinGroupSampler("label")], ids=repr)
def test_the_minibatch_loss_is_unbiased_for_the_whole_set(data, sampler):
    model, elbo = PoissonRates(data.schema.n_genes), Trace_ELBO()
    full = elbo.differentiable_loss(model.model, model.guide,
                                    data.batch(torch.arange(data.n_cells))).item()
    losses = [elbo.differentiable_loss(model.model, model.guide, batch).item()
              for seed in range(40) for batch in epoch(sampler, data, 30, seed)]
    assert np.mean(losses) == pytest.approx(full, rel=0.01)


def test_stratified_split_holds_out_each_group(data):
    groups = group_codes(data, "label")
    train, validation = stratified_split(groups, 0.2, torch.Generator().manual_seed(0))
    assert sorted(torch.cat([train, validation]).tolist()) == list(range(data.n_cells))
    for g, size in enumerate(groups.bincount().tolist()):
        assert int((groups[validation] == g).sum()) == round(0.2 * size)


def test_group_codes_combine_covariates_and_name_errors(data):
    joint = group_codes(data, ["domain", "label"])
    pairs = {(int(d), int(l)) for d, l in zip(data.domain, data.label)}
    assert len(torch.unique(joint)) == len(pairs)
    with pytest.raises(ValueError, match=r"no covariate 'donor' to group cells by; it carries "
                                         r"\['domain', 'label'\]"):
        group_codes(data, "donor")
    with pytest.raises(ValueError, match="smaller than the 3 groups"):
        epoch(BalancedSampler("label"), data, 2)


def test_fit_takes_a_sampler_and_a_stratified_validation_split(data):
    torch.manual_seed(0)
    model = VAE(data.schema, n_latent=2, n_hidden=16)
    history = fit(model, data, max_epochs=8, lr=1e-2, batch_size=30, progress=False,
                  sampler=BalancedSampler("label"), stratify="label", device="cpu")
    assert history.validation_elbo[-1] > history.validation_elbo[0]
