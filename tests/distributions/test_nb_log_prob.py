"""The table-lookup NB kernel against the direct formula and Pyro, on each of its paths."""

from __future__ import annotations

import pytest
import torch
from pyro.distributions import GammaPoisson

from pyro_causalcell.distributions import nb_log_prob as kernel
from pyro_causalcell.distributions.nb_log_prob import TABLE_SIZE, nb_log_prob


def direct(value, log_mean, theta):
    mu = log_mean.exp()
    return (torch.lgamma(value + theta) - torch.lgamma(theta) - torch.lgamma(value + 1)
            + theta * (theta.log() - (theta + mu).log())
            + value * (log_mean - (theta + mu).log()))


@pytest.fixture
def inputs():
    generator = torch.Generator().manual_seed(0)
    mean = torch.rand(30, 40, generator=generator, dtype=torch.float64) * 20 + 1e-3
    theta = torch.rand(40, generator=generator, dtype=torch.float64) * 10 + 0.05
    value = torch.poisson(mean, generator=generator)
    value[0, :3] = torch.tensor([TABLE_SIZE, TABLE_SIZE + 1, 5000.0])  # table edge and beyond
    return value, mean.log(), theta


@pytest.mark.parametrize("shift", [0.0, 0.25], ids=["integer counts", "non-integer counts"])
def test_log_prob_and_gradients_match_the_direct_formula(inputs, shift):
    value, log_mean, theta = inputs
    value = value + shift
    a = log_mean.clone().requires_grad_()
    b = theta.clone().requires_grad_()
    ours = nb_log_prob(value, a, None, b)
    weights = torch.randn(value.shape, dtype=value.dtype)
    grads = torch.autograd.grad((ours * weights).sum(), [a, b])
    a2 = log_mean.clone().requires_grad_()
    b2 = theta.clone().requires_grad_()
    reference = direct(value, a2, b2)
    expected = torch.autograd.grad((reference * weights).sum(), [a2, b2])
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-9)
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_tables_serve_counts_mostly_within_them(inputs, monkeypatch):
    value, log_mean, theta = inputs
    assert 0 < (value > TABLE_SIZE).float().mean() <= kernel.MAX_LARGE_SHARE
    calls = []
    tables = kernel._tables
    monkeypatch.setattr(kernel, "_tables", lambda t: calls.append(1) or tables(t))
    nb_log_prob(value, log_mean.clone().requires_grad_(), None, theta.clone().requires_grad_()
                ).sum().backward()
    assert len(calls) == 2  # the value and its gradient


def test_mostly_large_counts_take_the_direct_formula(inputs, monkeypatch):
    _, log_mean, theta = inputs
    value = torch.poisson(torch.full(log_mean.shape, 60.0, dtype=log_mean.dtype),
                          generator=torch.Generator().manual_seed(1))
    monkeypatch.setattr(kernel, "_tables", lambda t: pytest.fail("used the tables"))
    a, b = log_mean.clone().requires_grad_(), theta.clone().requires_grad_()
    ours = nb_log_prob(value, a, None, b)
    grads = torch.autograd.grad(ours.sum(), [a, b])
    a2, b2 = log_mean.clone().requires_grad_(), theta.clone().requires_grad_()
    reference = direct(value, a2, b2)
    torch.testing.assert_close(ours, reference, rtol=1e-10, atol=1e-9)
    for got, want in zip(grads, torch.autograd.grad(reference.sum(), [a2, b2])):
        torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-9)


def test_per_cell_theta_takes_the_general_path(inputs):
    value, log_mean, _ = inputs
    theta = torch.rand(value.shape, dtype=value.dtype) + 0.5
    expected = GammaPoisson(theta, theta / log_mean.exp()).log_prob(value)
    torch.testing.assert_close(nb_log_prob(value, log_mean, None, theta), expected)


def test_gradcheck(inputs):
    value, log_mean, theta = inputs
    value, log_mean, theta = value[:4, :5], log_mean[:4, :5], theta[:5]
    a = log_mean.clone().requires_grad_()
    b = theta.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, t: nb_log_prob(value, x, None, t), (a, b))


def test_large_theta_stays_accurate_in_float32():
    """The tabulated sum avoids the cancellation of lgamma(x + theta) - lgamma(theta)."""
    theta64 = torch.full((3,), 1e4, dtype=torch.float64)
    value64 = torch.tensor([[0.0, 3.0, 20.0]], dtype=torch.float64)
    log_mean64 = torch.tensor([[0.5, 1.0, 3.0]], dtype=torch.float64)
    exact = direct(value64, log_mean64, theta64)
    ours = nb_log_prob(value64.float(), log_mean64.float(), None, theta64.float())
    assert (ours.double() - exact).abs().max() < 2e-3
