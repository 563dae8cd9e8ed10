"""MultiGroupVI: shared and group-private latents."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyro_causalcell import (VAE, BalancedSampler, CellData, MultiGroupVI, fit, latent, load,
                             save)
from pyro_causalcell.metrics import (batch_mixing, label_silhouette,
                                     mean_correlation_coefficient)
from pyro_causalcell.simulate import shared_private


@pytest.fixture(scope="module")
def data() -> CellData:
    return CellData.from_anndata(shared_private(n_cells=300, n_genes=40, seed=1),
                                 domain_key="group")


def test_sites_slots_and_the_penalty(data, replayed):
    torch.manual_seed(0)
    model = MultiGroupVI(data.schema, n_latent_shared=3, n_latent_private=2, n_hidden=16)
    batch = data.batch(torch.arange(12))
    guide, trace = replayed(model, batch)
    assert trace.nodes["z_shared"]["value"].shape == (12, 3)
    assert trace.nodes["z_private"]["value"].shape == (12, 2)
    assert trace.nodes["domain"]["is_observed"] and "wasserstein" in trace.nodes
    z = torch.randn(12, 2)
    placed = model.placed(z, batch.domain).view(12, data.schema.n_domains, 2)
    for cell in range(12):
        for group in range(data.schema.n_domains):
            expected = z[cell] if group == batch.domain[cell] else torch.zeros(2)
            assert torch.equal(placed[cell, group], expected)
    # the penalty reaches the other groups' encoders only
    trace.compute_log_prob()
    model.zero_grad()
    own = int(batch.domain[0])
    single = data.batch(torch.arange(1))
    _, one = replayed(model, single)
    one.compute_log_prob()
    one.nodes["wasserstein"]["log_prob_sum"].backward()
    for group, encoder in enumerate(model.private_encoders):
        gradient = encoder.net.layers[0].weight.grad
        touched = gradient is not None and gradient.abs().sum() > 0
        assert touched == (group != int(single.domain[0])), group
    assert own == int(batch.domain[0])


def test_bad_arguments_are_named():
    adata = shared_private(n_cells=50, n_genes=20, seed=2)
    no_groups = CellData.from_anndata(adata)
    with pytest.raises(ValueError, match="groups are the domain"):
        MultiGroupVI(no_groups.schema)
    with pytest.raises(ValueError, match="wasserstein_weight must be >= 0"):
        MultiGroupVI(CellData.from_anndata(adata, domain_key="group").schema,
                     wasserstein_weight=-1.0)


def test_outputs_and_round_trip(data, tmp_path):
    torch.manual_seed(0)
    model = MultiGroupVI(data.schema, n_latent_shared=3, n_latent_private=2, n_hidden=16)
    history = fit(model, data, max_epochs=3, progress=False, device="cpu",
                  sampler=BalancedSampler("domain"))
    assert "wasserstein" in history.penalties
    assert latent(model, data).shape == (data.n_cells, 3)  # z_shared by default
    assert latent(model, data, site="z_private").shape == (data.n_cells, 2)
    shared = model.shared_expression(data)
    assert shared.shape == (data.n_cells, data.schema.n_genes) and (shared > 0).all()
    scores = model.group_specific_scores(data)
    assert scores.shape == (data.schema.n_genes, data.schema.n_domains)
    assert list(scores.columns) == list(data.schema.domains)
    restored = load(save(model, tmp_path / "mgvi.pt"), data)
    np.testing.assert_allclose(latent(restored, data), latent(model, data), rtol=1e-5,
                               atol=1e-6)


def test_blocks_recover_their_truth_and_separate_as_they_should():
    adata = shared_private(n_cells=2000, n_genes=100, seed=4)
    data = CellData.from_anndata(adata, domain_key="group")
    groups = adata.obs["group"].astype(str).to_numpy()
    torch.manual_seed(4)
    model = MultiGroupVI(data.schema, n_latent_shared=4, n_latent_private=2, n_hidden=64)
    fit(model, data, max_epochs=150, lr=3e-3, progress=False, device="cpu", seed=4)
    torch.manual_seed(4)
    vae = VAE(data.schema, n_latent=6, n_hidden=64, use_domain=False)
    fit(vae, data, max_epochs=150, lr=3e-3, progress=False, device="cpu", seed=4)
    z_vae = latent(vae, data)
    shared = latent(model, data, site="z_shared")
    private = latent(model, data, site="z_private")
    # against a VAE with the same total number of latents (seed 4: 0.78 vs 0.73)
    assert (mean_correlation_coefficient(adata.obsm["z_shared"], shared)
            > mean_correlation_coefficient(adata.obsm["z_shared"], z_vae) + 0.02)
    blocks = adata.uns["true_private_blocks"]
    for g, name in enumerate(adata.obs["group"].cat.categories):
        if not blocks[g].any():
            continue  # the background group has no private truth
        cells = groups == name
        truth = adata.obsm["z_private"][cells][:, blocks[g]]
        assert (mean_correlation_coefficient(truth, private[cells])
                > mean_correlation_coefficient(truth, z_vae[cells]) + 0.05), name
    assert batch_mixing(shared, groups) > 0.6
    assert label_silhouette(private, groups) > label_silhouette(shared, groups) + 0.05
    # other groups' private encoders put a cell near zero
    with torch.no_grad():
        counts = data.batch(torch.arange(data.n_cells)).counts
        locs, _ = model.private_posteriors(counts)
    own = torch.as_tensor(data.domain)
    norms = locs.norm(dim=-1)  # (groups, cells)
    is_own = torch.nn.functional.one_hot(own, data.schema.n_domains).T.bool()
    assert norms[~is_own].mean() < 0.25 * norms[is_own].mean()
