"""MultiGroupVI: shared and group-private latents."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from pyro_causalcell import (VAE, BalancedSampler, CellData, MultiGroupVI, fit, latent, load,
                             save)
from pyro_causalcell.infer.protocol import model_device
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


def multigroup_scores(seed: int, max_epochs: int = 150) -> dict:
    """MultiGroupVI and a VAE with as many latents, fitted from ``seed`` on one simulated design
    (its data seed stays 4): what the test below asserts, for any training seed."""
    adata = shared_private(n_cells=2000, n_genes=100, seed=4)
    data = CellData.from_anndata(adata, domain_key="group")
    groups = adata.obs["group"].astype(str).to_numpy()
    torch.manual_seed(seed)
    model = MultiGroupVI(data.schema, n_latent_shared=4, n_latent_private=2, n_hidden=64)
    fit(model, data, max_epochs=max_epochs, lr=3e-3, progress=False, device="cpu", seed=seed)
    torch.manual_seed(seed)
    vae = VAE(data.schema, n_latent=6, n_hidden=64, use_domain=False)
    fit(vae, data, max_epochs=max_epochs, lr=3e-3, progress=False, device="cpu", seed=seed)
    z_vae = latent(vae, data)
    shared = latent(model, data, site="z_shared")
    private = latent(model, data, site="z_private")
    scores = {"shared": (mean_correlation_coefficient(adata.obsm["z_shared"], shared),
                         mean_correlation_coefficient(adata.obsm["z_shared"], z_vae)),
              "private": {}}  # group: (ours, VAE's)
    blocks = adata.uns["true_private_blocks"]
    for g, name in enumerate(adata.obs["group"].cat.categories):
        if not blocks[g].any():
            continue  # the background group has no private truth
        cells = groups == name
        truth = adata.obsm["z_private"][cells][:, blocks[g]]
        scores["private"][name] = (mean_correlation_coefficient(truth, private[cells]),
                                   mean_correlation_coefficient(truth, z_vae[cells]))
    scores["mixing shared"] = batch_mixing(shared, groups)
    scores["silhouette"] = (label_silhouette(private, groups), label_silhouette(shared, groups))
    # other groups' private encoders should put a cell near zero
    with torch.no_grad():
        counts = data.batch(torch.arange(data.n_cells)).to(model_device(model)).counts
        locs, _ = model.private_posteriors(counts)
    own = torch.as_tensor(data.domain).to(locs.device)
    norms = locs.norm(dim=-1)  # (groups, cells)
    is_own = torch.nn.functional.one_hot(own, data.schema.n_domains).T.bool()
    scores["norm ratio"] = float(norms[~is_own].mean() / norms[is_own].mean())
    return scores


def test_blocks_recover_their_truth_and_separate_as_they_should():
    """Chosen on training seeds 0-7 (seed 4 is the test's) and held, with margin, on 8-11 as
    well: the private blocks match their truth better than a VAE with as many latents (mean
    over the two groups by 0.05-0.27; each group's by more than 0.05 on nine of the twelve), the
    shared block mixes the groups (0.961-0.963) and matches its truth (MCC 0.68-0.86; a VAE's
    0.62-0.82, so it is not asserted to be better), the private block separates the groups
    more than the shared one (silhouette by 0.052-0.062), and other groups' private encoders put
    a cell near zero (mean norm 0.21-0.27 of the own encoder's). 300 epochs instead of 150 did
    not make the shared block beat the VAE (seed 3: 0.72 against 0.80)."""
    scores = multigroup_scores(seed=4)
    print(f"MultiGroupVI: {scores}")
    private, vae = np.mean(list(scores["private"].values()), axis=0)
    assert private > vae + 0.02, scores
    assert scores["shared"][0] > 0.6, scores
    assert scores["mixing shared"] > 0.9, scores
    private, shared = scores["silhouette"]
    assert private > shared + 0.03, scores
    assert scores["norm ratio"] < 0.35, scores
