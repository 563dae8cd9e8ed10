"""PackedDropout: nn.Dropout's law with a cheaper mask on the CPU."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from pyro_causalcell.nn import MLP, PackedDropout


@pytest.mark.parametrize("p", [0.1, 0.5, 0.9])
def test_drops_the_rate_asked_and_rescales_the_kept_entries(p):
    torch.manual_seed(0)
    x = torch.ones(400, 250)  # 100,000 entries: the rate within 5 binomial standard deviations
    y = PackedDropout(p).train()(x)
    dropped = (y == 0).float().mean().item()
    assert abs(dropped - p) < 5 * (p * (1 - p) / x.numel()) ** 0.5
    assert torch.allclose(y[y != 0], torch.full_like(y[y != 0], 1 / (1 - p)))
    assert abs(y.mean().item() - 1.0) < 0.03  # the expectation is kept


def test_entries_are_dropped_independently():
    torch.manual_seed(1)
    kept = PackedDropout(0.5).train()(torch.ones(1000, 64)) != 0
    # the four entries cut from one 64-bit draw are neighbours; their masks must not agree
    neighbours = (kept[:, :-1] == kept[:, 1:]).float().mean().item()
    assert abs(neighbours - 0.5) < 0.02
    columns = kept.float().mean(0)
    assert columns.min() > 0.4 and columns.max() < 0.6


def test_gradient_is_the_mask_times_the_scale():
    torch.manual_seed(2)
    x = torch.randn(64, 32, requires_grad=True)
    y = PackedDropout(0.25).train()(x)
    y.sum().backward()
    assert torch.allclose(x.grad, (y != 0).float() / 0.75)


def test_is_the_identity_in_evaluation_and_nn_dropout_at_the_ends():
    x = torch.randn(8, 4)
    assert torch.equal(PackedDropout(0.3).eval()(x), x)
    assert torch.equal(PackedDropout(0.0).train()(x), x)
    assert torch.equal(PackedDropout(1.0).train()(x), torch.zeros_like(x))
    assert isinstance(PackedDropout(0.1), nn.Dropout)


def test_the_mlp_uses_it():
    assert isinstance(MLP(3, 2, (8,), dropout=0.1).dropout, PackedDropout)
