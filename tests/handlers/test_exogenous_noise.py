"""Exogenous noise: abduction inverts prediction; an unchanged mechanism gives back the value."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine

from pyro_causalcell.distributions import shift_mixture
from pyro_causalcell.handlers import (AbductionMessenger, CoordinateMixture,
                                      NoiseReplayMessenger, abduct, predict)


@pytest.fixture(autouse=True)
def seeded():
    torch.manual_seed(0)


def mixture():
    perturbation = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    shift = torch.tensor([[4.0, -3.0, 0.5], [-2.0, 6.0, 1.0]])
    probability = torch.tensor([[0.7, 0.2, 0.5], [0.9, 0.6, 0.1]])
    return shift_mixture(perturbation, shift, probability)


def test_normal_noise_is_standardised_and_round_trips():
    fn = dist.Normal(torch.tensor([1.0, -2.0]), torch.tensor([0.5, 3.0])).to_event(1)
    value = torch.tensor([2.0, 4.0])
    noise = abduct(fn, value)
    torch.testing.assert_close(noise.epsilon, torch.tensor([2.0, 2.0]))
    torch.testing.assert_close(predict(fn, noise), value)
    moved = dist.Normal(torch.tensor([0.0, 0.0]), torch.tensor([1.0, 1.0])).to_event(1)
    torch.testing.assert_close(predict(moved, noise), torch.tensor([2.0, 2.0]))


def test_mixture_round_trips_and_its_gumbels_pick_the_observed_component():
    fn = mixture()
    value = fn.sample()
    for _ in range(20):  # abduction is random; every draw must reproduce the value
        noise = abduct(fn.to_event(1), value)
        torch.testing.assert_close(predict(fn.to_event(1), noise), value)


def test_mixture_component_posterior_follows_bayes_rule():
    fn = dist.MixtureSameFamily(dist.Categorical(logits=torch.log(torch.tensor([0.3, 0.7]))),
                                dist.Normal(torch.tensor([0.0, 1.0]), torch.tensor([1.0, 1.0])))
    value = torch.full((20000,), 0.5)  # equidistant: posterior = prior weights
    noise = abduct(fn.expand((20000,)), value)
    component_one = (noise.epsilon < 0).float().mean()  # eps = -0.5 from component 1
    assert abs(component_one.item() - 0.7) < 0.02


def test_coordinate_mixture_uses_each_coordinates_own_mechanism():
    base = dist.Normal(torch.zeros(3, 3), 1.0)
    fn = CoordinateMixture(base, mixture(), torch.tensor([[1.0], [0.0], [1.0]]))
    value = fn.sample()
    noise = abduct(fn, value)
    torch.testing.assert_close(noise.epsilon[1], value[1])  # base coordinates: eps = z
    assert torch.isnan(noise.gumbel[1]).all() and not torch.isnan(noise.gumbel[0]).any()
    torch.testing.assert_close(predict(fn, noise), value)


def test_unsupported_family_is_named():
    with pytest.raises(NotImplementedError, match="Gamma site is not supported"):
        abduct(dist.Gamma(2.0, 1.0), torch.tensor(1.0))


def test_messengers_record_and_replay_noise():
    def program(loc):
        return pyro.sample("z", dist.Normal(loc, 1.0))

    abduction = AbductionMessenger(["z"])
    with abduction:
        poutine.condition(program, data={"z": torch.tensor(3.0)})(torch.tensor(1.0))
    torch.testing.assert_close(abduction.noise["z"].epsilon, torch.tensor(2.0))
    with NoiseReplayMessenger(abduction.noise):
        assert program(torch.tensor(-1.0)).item() == pytest.approx(1.0)


# ---------------------------------------------------------------------- more families, a registry
def test_multivariate_normal_noise_round_trips_and_follows_a_new_mean():
    cov = torch.tensor([[2.0, 0.6], [0.6, 1.0]])
    fn = dist.MultivariateNormal(torch.tensor([1.0, -1.0]), covariance_matrix=cov)
    value = fn.sample((5,))
    noise = abduct(fn, value)
    torch.testing.assert_close(predict(fn, noise), value)
    tril = torch.linalg.cholesky(cov)
    torch.testing.assert_close(noise.epsilon @ tril.T, value - torch.tensor([1.0, -1.0]))
    moved = dist.MultivariateNormal(torch.tensor([3.0, 0.0]), covariance_matrix=cov)
    torch.testing.assert_close(predict(moved, noise), value + torch.tensor([2.0, 1.0]))


def test_transformed_noise_is_the_base_noise():
    fn = dist.LogNormal(torch.tensor([0.5, 1.0]), torch.tensor([0.3, 0.2])).to_event(1)
    value = fn.sample()
    noise = abduct(fn, value)
    torch.testing.assert_close(noise.epsilon, (value.log() - torch.tensor([0.5, 1.0]))
                               / torch.tensor([0.3, 0.2]))
    torch.testing.assert_close(predict(fn, noise), value)


def test_a_registered_family_joins_without_editing_the_engine():
    from pyro_causalcell.handlers import Noise, exogenous_noise, register_noise_family

    fn = dist.Laplace(torch.tensor([1.0, 2.0]), torch.tensor([0.5, 2.0]))
    with pytest.raises(NotImplementedError, match="register_noise_family"):
        abduct(fn, torch.zeros(2))
    register_noise_family(dist.Laplace, lambda f, z: Noise((z - f.loc) / f.scale),
                          lambda f, n: f.loc + f.scale * n.epsilon)
    try:
        noise = abduct(fn, torch.tensor([2.0, 0.0]))
        torch.testing.assert_close(noise.epsilon, torch.tensor([2.0, -1.0]))
        torch.testing.assert_close(predict(dist.Laplace(0.0, 1.0).expand([2]), noise),
                                   torch.tensor([2.0, -1.0]))
    finally:
        exogenous_noise._FAMILIES.pop()


# ---------------------------------------------------------------------- laws of the handlers
def two_site_program():
    z = pyro.sample("z", dist.Normal(torch.zeros(4), 1.0).to_event(1))
    w = pyro.sample("w", dist.Normal(z.sum() * torch.ones(2), 0.5).to_event(1))
    return z, w


def test_nesting_disjoint_masks_equals_one_union_mask():
    from pyro_causalcell.handlers import StochasticInterventionMessenger as Soft

    new = dist.Normal(torch.full((4,), 3.0), 2.0).to_event(1)
    first, second = torch.tensor([1.0, 0, 0, 0]), torch.tensor([0, 0, 1.0, 0])
    with Soft("z", new, first), Soft("z", new, second):
        nested = poutine.trace(two_site_program).get_trace()
    union = poutine.trace(Soft("z", new, first + second)(two_site_program)).get_trace()
    for attribute in ("loc", "scale"):
        torch.testing.assert_close(getattr(nested.nodes["z"]["fn"].base_dist, attribute),
                                   getattr(union.nodes["z"]["fn"].base_dist, attribute))


def test_a_soft_intervention_is_idempotent():
    from pyro_causalcell.handlers import StochasticInterventionMessenger as Soft

    new = dist.Normal(torch.full((4,), -1.0), 0.3).to_event(1)
    mask = torch.tensor([0, 1.0, 1.0, 0])
    once = poutine.trace(Soft("z", new, mask)(two_site_program)).get_trace()
    twice = poutine.trace(Soft("z", new, mask)(Soft("z", new, mask)(two_site_program))).get_trace()
    for attribute in ("loc", "scale"):
        torch.testing.assert_close(getattr(once.nodes["z"]["fn"].base_dist, attribute),
                                   getattr(twice.nodes["z"]["fn"].base_dist, attribute))


def test_abduction_of_several_sites_at_once_replays_both():
    factual = poutine.trace(two_site_program).get_trace()
    abduction = AbductionMessenger(["z", "w"])
    with abduction:
        poutine.trace(poutine.replay(two_site_program, trace=factual)).get_trace()
    assert set(abduction.noise) == {"z", "w"}
    with NoiseReplayMessenger(abduction.noise):
        z, w = two_site_program()
    torch.testing.assert_close(z, factual.nodes["z"]["value"])
    torch.testing.assert_close(w, factual.nodes["w"]["value"])
