"""Stochastic interventions: replace a site's mechanism on a mask of coordinates."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import torch
from pyro import poutine

from pyro_causalcell.handlers import (CoordinateMixture, StochasticInterventionMessenger,
                                      intervene_on_coordinates, stochastic_intervention)


def program(n=6, k=3):
    with pyro.plate("cells", n):
        z = pyro.sample("z", dist.Normal(torch.zeros(k), 1.0).to_event(1))
        x = pyro.sample("x", dist.Normal(z.sum(-1), 0.1))
    return z, x


def test_normal_mechanism_on_a_mask_gives_a_normal_with_swapped_coordinates():
    mask = torch.tensor([0.0, 1.0, 0.0])
    with StochasticInterventionMessenger("z", dist.Normal(10.0, 2.0), mask):
        trace = poutine.trace(program).get_trace()
    fn = trace.nodes["z"]["fn"]
    assert isinstance(fn, dist.Independent) and type(fn.base_dist) is dist.Normal
    assert torch.equal(fn.base_dist.loc[0], torch.tensor([0.0, 10.0, 0.0]))
    assert torch.equal(fn.base_dist.scale[0], torch.tensor([1.0, 2.0, 1.0]))
    assert trace.nodes["x"]["fn"].batch_shape == (6,)  # other sites untouched
    assert type(trace.nodes["x"]["fn"]) is dist.Normal


def test_per_cell_masks_and_a_callable_mechanism():
    mask = torch.zeros(6, 3)
    mask[:3, 2] = 1.0  # only the first three cells are intervened on, on the last coordinate
    with stochastic_intervention(site="z", mask=mask,
                                 mechanism=lambda fn: dist.Normal(fn.mean + 5.0, 1.0)):
        trace = poutine.trace(program).get_trace()
    loc = trace.nodes["z"]["fn"].base_dist.loc
    assert torch.equal(loc[:3, 2], torch.full((3,), 5.0))
    assert torch.equal(loc[3:], torch.zeros(3, 3)) and torch.equal(loc[:, :2], torch.zeros(6, 2))


def test_other_families_mix_log_densities_coordinatewise():
    base = dist.Normal(torch.zeros(3), 1.0).to_event(1)
    new = dist.Laplace(torch.full((3,), 4.0), 0.5)
    mask = torch.tensor([1.0, 0.0, 1.0])
    mixed = intervene_on_coordinates(base, new, mask)
    assert isinstance(mixed, CoordinateMixture) and mixed.event_shape == (3,)
    value = torch.tensor([4.2, -0.3, 3.9])
    expected = (new.log_prob(value) * mask + dist.Normal(0.0, 1.0).log_prob(value) * (1 - mask))
    torch.testing.assert_close(mixed.log_prob(value), expected.sum())
    samples = mixed.sample((4000,))
    assert abs(samples[:, 0].mean() - 4.0) < 0.1 and abs(samples[:, 1].mean()) < 0.1


def test_fractional_masks_interpolate_and_keep_gradients():
    logits = torch.tensor([0.3], requires_grad=True)
    mask = torch.sigmoid(logits).expand(3)
    fn = intervene_on_coordinates(dist.Normal(torch.zeros(3), 1.0).to_event(1),
                                  dist.Normal(2.0, 1.0), mask)
    fn.base_dist.loc.sum().backward()
    assert logits.grad is not None and logits.grad.abs() > 0


def test_observed_sites_are_left_alone():
    with StochasticInterventionMessenger("x", dist.Normal(100.0, 1.0), torch.ones(())):
        trace = poutine.trace(poutine.condition(program, data={"x": torch.zeros(6)})).get_trace()
    assert trace.nodes["x"]["fn"].loc.abs().max() < 100


def test_pyro_do_on_another_site_still_composes():
    mask = torch.tensor([1.0, 0.0, 0.0])
    intervened = pyro.do(program, data={"x": torch.zeros(6)})
    with StochasticInterventionMessenger("z", dist.Normal(-3.0, 1.0), mask):
        trace = poutine.trace(intervened).get_trace()
    assert torch.equal(trace.nodes["z"]["fn"].base_dist.loc[:, 0], torch.full((6,), -3.0))
