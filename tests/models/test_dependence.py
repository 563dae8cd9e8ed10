"""Differentiable dependence penalties: block total correlation and (conditional) HSIC."""

from __future__ import annotations

import math

import pytest
import torch

from pyro_causalcell.kernels import dimension_bandwidth, gaussian_kernel, hsic, normalized_hsic
from pyro_causalcell.models.dependence import block_total_correlation, conditional_hsic


def test_block_total_correlation_is_larger_for_dependent_blocks():
    torch.manual_seed(0)
    n, scale = 256, torch.full((256, 2), 0.1)
    a = torch.randn(n, 2)
    independent = block_total_correlation([a, torch.randn(n, 2)], [a, torch.randn(n, 2)],
                                          [scale, scale], n_cells=n)
    b = a + 0.05 * torch.randn(n, 2)
    dependent = block_total_correlation([a, b], [a, b], [scale, scale], n_cells=n)
    assert dependent.shape == (n,)
    assert dependent.mean() > independent.mean() + 1.0


def test_block_total_correlation_of_a_constant_posterior_is_the_normaliser():
    """Every cell with posterior N(0, I): LSE terms are log B + log N(z); TC = log N exactly."""
    torch.manual_seed(0)
    z = [torch.randn(32, 2), torch.randn(32, 3)]
    locs = [torch.zeros(32, 2), torch.zeros(32, 3)]
    scales = [torch.ones(32, 2), torch.ones(32, 3)]
    tc = block_total_correlation(z, locs, scales, n_cells=1000)
    torch.testing.assert_close(tc, torch.full((32,), math.log(1000.0)), rtol=1e-5, atol=1e-4)


def test_block_total_correlation_needs_two_blocks():
    with pytest.raises(ValueError, match="at least two blocks"):
        block_total_correlation([torch.zeros(3, 1)], [torch.zeros(3, 1)], [torch.ones(3, 1)], 3)


def test_hsic_closed_form_and_independence():
    # linear kernels of centred one-dimensional x and y: HSIC = cov(x, y)^2
    x = torch.tensor([[1.0], [2.0], [4.0], [5.0]])
    y = torch.tensor([[2.0], [1.0], [5.0], [4.0]])
    xc, yc = x - x.mean(), y - y.mean()
    expected = ((xc * yc).mean()) ** 2
    torch.testing.assert_close(hsic(x @ x.T, y @ y.T), expected)
    torch.manual_seed(0)
    u, v = torch.randn(400, 2), torch.randn(400, 2)
    sigma = dimension_bandwidth(2)
    dependent = normalized_hsic(gaussian_kernel(u, sigma), gaussian_kernel(u + 0.1 * v, sigma))
    independent = normalized_hsic(gaussian_kernel(u, sigma), gaussian_kernel(v, sigma))
    assert 0.0 <= independent < 0.05 < 0.5 < dependent <= 1.0 + 1e-6


def test_conditional_hsic_sees_dependence_within_groups_only():
    """x depends on y only through the group: zero given the group, large marginally."""
    torch.manual_seed(0)
    groups = torch.arange(600) % 3
    y = torch.nn.functional.one_hot((groups + (torch.rand(600) < 0.3)) % 3, 3).float()
    x_through_group = groups.float().unsqueeze(-1) * 3 + torch.randn(600, 1)
    x_direct = y.argmax(-1).float().unsqueeze(-1) * 3 + torch.randn(600, 1)
    within = conditional_hsic(x_through_group, y, groups)
    direct = conditional_hsic(x_direct, y, groups)
    assert within < 0.05 and direct > 0.3
    x = x_direct.requires_grad_(True)
    conditional_hsic(x, y, groups).backward()
    assert x.grad.abs().sum() > 0


def test_conditional_hsic_equals_the_per_group_computation():
    torch.manual_seed(1)
    x, groups = torch.randn(90, 3), torch.randint(0, 4, (90,))
    groups[0] = 7  # a group of one cell contributes 0
    y = torch.nn.functional.one_hot(torch.randint(0, 3, (90,)), 3).float()
    def within(g):
        member = groups == g
        return member.sum() * normalized_hsic(gaussian_kernel(x[member], math.sqrt(3)),
                                              y[member] @ y[member].T)

    expected = sum(within(g) for g in torch.unique(groups)) / 90
    torch.testing.assert_close(conditional_hsic(x, y, groups), expected, rtol=1e-4, atol=1e-6)


def test_conditional_hsic_of_a_constant_nuisance_is_zero_not_nan():
    """A counterfactual sets every cell's domain alike: the penalty must stay finite (0)."""
    torch.manual_seed(2)
    x, groups = torch.randn(3000, 4), torch.randint(0, 3, (3000,))
    y = torch.nn.functional.one_hot(torch.zeros(3000, dtype=torch.long), 3).float()
    value = conditional_hsic(x, y, groups)
    assert torch.isfinite(value) and abs(value.item()) < 1e-6


def test_dimension_bandwidth_is_the_expected_distance_of_two_standard_normal_points():
    torch.manual_seed(0)
    for d in (1, 2, 10):
        a, b = torch.randn(200000, d), torch.randn(200000, d)
        measured = (a - b).norm(dim=-1).mean().item()
        assert abs(dimension_bandwidth(d) - measured) / measured < 0.01
    assert abs(dimension_bandwidth(1) - 2 / math.sqrt(math.pi)) < 1e-12
