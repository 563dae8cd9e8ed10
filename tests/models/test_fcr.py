"""FCR: covariate, treatment and interaction blocks, their regularisers and the engine parts."""

from __future__ import annotations

from types import SimpleNamespace

import pyro
import pytest
import torch

from pyro_causalcell import FCR, BalancedSampler, CellData, counterfactual, fit, latent, load, save
from pyro_causalcell.models import InteractionPrior
from pyro_causalcell.models.discriminators import (PermutationDiscriminator,
                                                   within_group_permutation)
from pyro_causalcell.simulate import factorized


@pytest.fixture(scope="module")
def adata():
    return factorized(n_cells=400, n_genes=40, n_covariates=3, n_treatments=2, seed=3)


@pytest.fixture(scope="module")
def data(adata) -> CellData:
    return CellData.from_anndata(adata, perturbation_key="treatment", control="control",
                                 domain_key="covariate", dose_key="dose")


def small(data, **kwargs) -> FCR:
    torch.manual_seed(0)
    return FCR(data.schema, n_latent_x=2, n_latent_t=3, n_latent_tx=4, n_hidden=16, **kwargs)


def test_sites_shapes_and_the_decoder_sees_the_blocks_only(data, replayed):
    model = small(data)
    batch = data.batch(torch.arange(32))
    guide, trace = replayed(model, batch)
    for site, width in [("z_x", 2), ("z_t", 3), ("z_tx", 4)]:
        assert trace.nodes[site]["value"].shape == (32, width)
        assert trace.nodes[site]["value"] is guide.nodes[site]["value"]
    for site in ["domain", "perturbation", "dose", "counts"]:
        assert trace.nodes[site]["is_observed"], site
    for site in ["covariate_prediction", "treatment_prediction", "interaction_shrinkage",
                 "conditional_independence", "permutation_discriminators"]:
        assert site in trace.nodes, site
    assert trace.nodes["expression"]["value"].shape == (32, 40)
    assert model.decoder.net.layers[0].in_features == 2 + 3 + 4  # no covariate input
    off = small(data, classifier_weight=0.0, discriminator_weight=0.0,
                interaction_shrinkage=0.0, independence_weight=0.0)
    _, trace = replayed(off, batch)
    assert not {"covariate_prediction", "treatment_prediction", "interaction_shrinkage",
                "conditional_independence", "permutation_discriminators"} & set(trace.nodes)
    assert off.adversaries() == [] and len(model.adversaries()) == 1


def test_treatment_is_the_multi_hot_perturbation_times_the_dose(data):
    model = small(data)
    batch = data.batch(torch.arange(50))
    values = {"perturbation": batch.perturbation, "dose": batch.dose}
    expected = batch.perturbation * batch.dose.unsqueeze(-1)
    torch.testing.assert_close(model.treatment_features(values), expected)
    assert (model.treatment_features(values)[batch.perturbation.sum(-1) == 0] == 0).all()


def test_do_on_the_treatment_reaches_the_treatment_priors_only(data):
    model = small(data).eval()  # (in training mode each call moves the interaction centres)
    batch = data.batch(torch.arange(64))
    guide = pyro.poutine.trace(model.guide).get_trace(batch)

    def priors(model_fn):
        trace = pyro.poutine.trace(pyro.poutine.replay(model_fn, trace=guide)).get_trace(batch)
        return {s: trace.nodes[s]["fn"].base_dist.loc for s in ["z_x", "z_t", "z_tx"]}

    factual = priors(model.model)
    treated = torch.zeros_like(batch.perturbation)
    treated[:, 0] = 1.0
    moved = priors(pyro.do(model.model, data={"perturbation": treated,
                                               "dose": torch.ones(64)}))
    torch.testing.assert_close(moved["z_x"], factual["z_x"])
    changed = (batch.perturbation[:, 0] != 1) | (batch.dose != 1)
    assert (moved["z_t"] != factual["z_t"]).any(-1).eq(changed).all()
    assert (moved["z_tx"] != factual["z_tx"]).any(-1).eq(changed).all()


def test_bad_arguments_are_named(adata, data):
    untreated = CellData.from_anndata(adata, domain_key="covariate")
    with pytest.raises(ValueError, match="FCR needs a treatment"):
        FCR(untreated.schema)
    no_context = CellData.from_anndata(adata, perturbation_key="treatment", control="control")
    with pytest.raises(ValueError, match=r"covariates=\[\]: FCR needs at least one covariate"):
        FCR(no_context.schema)
    with pytest.raises(ValueError, match=r"covariates=\['donor'\]"):
        FCR(data.schema, covariates=["donor"])
    with pytest.raises(ValueError, match="discriminator_weight must be >= 0"):
        FCR(data.schema, discriminator_weight=-1.0)
    unknown = CellData.from_anndata(adata, schema=data.schema, unknown=["domain"])
    with pytest.raises(ValueError, match="FCR's encoders read the covariate"):
        latent(small(data), unknown, site="z_x")


def test_within_group_permutation_stays_in_the_group_and_moves_every_paired_cell():
    generator = torch.Generator().manual_seed(0)
    groups = torch.tensor([2, 0, 2, 1, 0, 2, 3, 0, 2])
    for _ in range(20):
        index = within_group_permutation(groups, generator)
        assert sorted(index.tolist()) == list(range(len(groups)))  # a permutation
        assert torch.equal(groups[index], groups)
        alone = groups == 1
        alone |= groups == 3
        assert torch.equal(index[alone], torch.nonzero(alone).squeeze(1))
        assert (index[~alone] != torch.nonzero(~alone).squeeze(1)).all()


def test_within_group_permutation_with_known_group_count_is_the_same_permutation():
    groups = torch.tensor([7, 0, 7, 3, 0, 7, 5, 0, 7])  # codes below 8; 1, 2, 4 and 6 absent
    for seed in range(5):
        found = within_group_permutation(groups, torch.Generator().manual_seed(seed))
        known = within_group_permutation(groups, torch.Generator().manual_seed(seed), n_groups=8)
        assert torch.equal(found, known)


def test_group_codes_are_found_without_reading_the_batch():
    from pyro_causalcell.models.components import category_codes, row_table_codes

    table = torch.tensor([[0.0, 0.0], [1.0, 0.0], [1.0, 0.5]])
    rows = torch.tensor([[1.0, 0.5], [0.0, 0.0], [1.0, 0.0], [1.0, 0.5]])
    assert row_table_codes(rows, table).tolist() == [2, 0, 1, 2]
    schema = SimpleNamespace(categories_of=lambda name: {"a": ("x", "y", "z"),
                                                         "b": ("u", "v")}[name])
    values = {"a": torch.tensor([0, 2, 1]), "b": torch.tensor([1, 0, 1])}
    codes, n_groups = category_codes(values, ["a", "b"], schema)
    assert n_groups == 6 and codes.tolist() == [1, 4, 3]  # a * 2 + b


def test_a_discriminator_detects_within_group_dependence_and_nothing_else():
    torch.manual_seed(0)
    n, groups = 512, torch.arange(512) % 4
    features = torch.nn.functional.one_hot(groups, 4).float()
    a = torch.randn(n, 2) + groups.unsqueeze(-1).float()  # depends on the group
    dependent = a + 0.3 * torch.randn(n, 2)
    independent = torch.randn(n, 2) + groups.unsqueeze(-1).float()
    losses = {}
    for name, b in [("dependent", dependent), ("independent", independent)]:
        torch.manual_seed(1)
        discriminator = PermutationDiscriminator(2, 2, 4, hidden=(32,))
        optimizer = torch.optim.Adam(discriminator.parameters(), lr=1e-2)
        for _ in range(300):
            loss = discriminator.loss(a, b, features, within_group_permutation(groups))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        with torch.no_grad():
            losses[name] = float(discriminator.loss(a, b, features,
                                                    within_group_permutation(groups)))
    chance = float(torch.log(torch.tensor(2.0)))
    assert losses["dependent"] < 0.5 * chance, losses
    assert losses["independent"] > 0.9 * chance, losses


def test_the_discriminator_penalty_reaches_the_encoders(data, replayed):
    model = small(data, classifier_weight=0.0, interaction_shrinkage=0.0)
    batch = data.batch(torch.arange(128))
    _, trace = replayed(model, batch)
    node = trace.nodes["permutation_discriminators"]
    model.zero_grad()
    node["fn"].log_prob(node["value"]).sum().backward()
    for block in [model.x_block, model.t_block, model.tx_block]:
        gradient = block.encoder.net.layers[0].weight.grad
        assert gradient is not None and gradient.abs().sum() > 0, block.site
    assert model.decoder.net.layers[0].weight.grad is None  # the decoder is not involved


def test_interaction_prior_is_centred_over_each_treatments_contexts_and_equal_for_controls():
    torch.manual_seed(0)
    prior = InteractionPrior(n_covariates=3, n_treatments=2, n_latent=4, momentum=1.0)
    x = torch.nn.functional.one_hot(torch.tensor([0, 1, 1, 2, 0, 2, 1, 0]), 3).float()
    t = torch.tensor([[0, 0], [1, 0], [1, 0], [1, 0], [0, 2], [0, 2], [0, 0], [0, 0]]).float()
    u = torch.cat([x, t], -1)
    prior.train()
    prior(u, 8, torch.ones(8))  # records each treatment's covariate mean (momentum 1)
    prior.eval()
    shift = prior.interaction(u)
    controls = t.sum(-1) == 0
    assert torch.equal(shift[controls], torch.zeros_like(shift[controls]))
    locs = prior(u, 8, torch.ones(8)).base_dist.loc
    torch.testing.assert_close(locs[controls], prior.control_loc.expand(int(controls.sum()), 4))
    for k in range(2):
        given = t[:, k] > 0
        torch.testing.assert_close(shift[given].mean(0), torch.zeros(4), atol=1e-6, rtol=0)


def test_default_sampler_balances_covariate_and_treatment_groups(data):
    sampler = small(data).default_sampler(data, batch_size=128)
    assert isinstance(sampler, BalancedSampler)
    assert list(sampler.covariates) == ["domain", "perturbation"]
    assert small(data, discriminator_weight=0.0).default_sampler(data, 128) is None
    assert small(data).default_sampler(data, batch_size=16) is None  # 9 groups > 16 / 4


def test_fit_trains_the_discriminators_apart_and_round_trips(adata, data, tmp_path):
    model = small(data)
    before = [p.detach().clone() for p in model.discriminators.parameters()]
    history = fit(model, data, max_epochs=3, batch_size=128, progress=False, device="cpu")
    assert "adversary_permutation" in history.to_dataframe()
    assert all(not torch.equal(b, p.cpu()) for b, p in zip(before,
                                                        model.discriminators.parameters()))
    path = save(model, tmp_path / "fcr")
    loaded = load(path, data)
    for site in ["z_x", "z_t", "z_tx"]:
        torch.testing.assert_close(torch.as_tensor(latent(loaded, data, site=site)),
                                   torch.as_tensor(latent(model, data, site=site)))
    torch.testing.assert_close(loaded.tx_block.prior.covariate_means,
                               model.tx_block.prior.covariate_means.cpu())
    cells = CellData.from_anndata(adata[:20], schema=data.schema)
    treated = counterfactual(model, cells, {"perturbation": "treatment_1", "dose": 1.0},
                             n_samples=2)
    moved = counterfactual(model, cells, {"domain": "covariate_1"}, n_samples=2)
    assert treated.shape == moved.shape == (cells.n_cells, 40)


def test_gaussian_likelihood_on_log_normalised_expression(adata, data, replayed):
    model = small(data, likelihood="gaussian")
    batch = data.batch(torch.arange(16))
    _, trace = replayed(model, batch)
    observed = trace.nodes["counts"]["value"]
    expected = torch.log1p(batch.counts / batch.counts.sum(-1, keepdim=True) * 1e4)
    torch.testing.assert_close(observed, expected)
    fit(model, data, max_epochs=2, batch_size=128, progress=False, device="cpu")
    cells = CellData.from_anndata(adata[:10], schema=data.schema)
    predicted = counterfactual(model, cells, {"perturbation": "control"}, output="counts",
                               n_samples=2)
    assert predicted.shape == (10, 40) and torch.isfinite(torch.as_tensor(predicted.X)).all()
