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
