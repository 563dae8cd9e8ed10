"""shift_mixture: per-cell target indicators summed out, against a hand-written enumeration."""

from __future__ import annotations

import math

import torch

from pyro_causalcell.distributions.shift_mixture import (active_perturbations, shift_mixture,
                                                        shift_mixture_log_prob)


def normal_log_prob(x: float, loc: float) -> float:
    return -0.5 * (x - loc) ** 2 - 0.5 * math.log(2 * math.pi)


def test_active_perturbations_pads_to_the_largest_combination():
    perturbation = torch.tensor([[0.0, 0, 0], [0, 1, 0], [1, 0, 1]])
    index, active = active_perturbations(perturbation)
    assert index.shape == active.shape == (3, 2)
    assert active.tolist() == [[0, 0], [1, 0], [1, 1]]
    assert index[1, 0] == 1 and set(index[2].tolist()) == {0, 2}


def test_log_prob_matches_the_enumeration_of_indicators():
    shift = torch.tensor([[2.0, -1.0], [0.5, 3.0], [9.0, 9.0]])
    probability = torch.tensor([[0.3, 0.9], [0.6, 0.2], [0.5, 0.5]])
    perturbation = torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0]])
    z = torch.tensor([[0.1, -0.4], [1.5, 0.2], [2.2, 2.5]])
    law = shift_mixture(perturbation, shift, probability)
    assert law.batch_shape == (3, 2)
    got = law.log_prob(z)
    for k in range(2):
        x = z[0, k].item()  # control: standard normal
        assert math.isclose(got[0, k].item(), normal_log_prob(x, 0.0), abs_tol=1e-5)
        x, p, d = z[1, k].item(), probability[0, k].item(), shift[0, k].item()
        want = math.log(p * math.exp(normal_log_prob(x, d))
                        + (1 - p) * math.exp(normal_log_prob(x, 0.0)))
        assert math.isclose(got[1, k].item(), want, abs_tol=1e-5)
        x = z[2, k].item()
        (pa, pb), (da, db) = probability[:2, k].tolist(), shift[:2, k].tolist()
        terms = [pa * pb * math.exp(normal_log_prob(x, da + db)),
                 pa * (1 - pb) * math.exp(normal_log_prob(x, da)),
                 (1 - pa) * pb * math.exp(normal_log_prob(x, db)),
                 (1 - pa) * (1 - pb) * math.exp(normal_log_prob(x, 0.0))]
        assert math.isclose(got[2, k].item(), math.log(sum(terms)), abs_tol=1e-5)


def test_gradients_reach_shift_and_probability():
    shift = torch.tensor([[1.0, -2.0]], requires_grad=True)
    probability = torch.tensor([[0.4, 0.7]], requires_grad=True)
    law = shift_mixture(torch.ones(5, 1), shift, probability)
    law.log_prob(torch.randn(5, 2) + 1.0).sum().backward()
    assert shift.grad.abs().min() > 0 and probability.grad.abs().min() > 0


def test_samples_have_the_mixture_mean():
    torch.manual_seed(0)
    law = shift_mixture(torch.ones(1, 1), torch.tensor([[4.0]]), torch.tensor([[0.25]]))
    draws = law.sample((20000,))
    assert abs(draws.mean().item() - 1.0) < 0.05  # 0.25 * 4


def test_log_prob_from_logits_matches_the_mixture_and_batches_over_tables():
    torch.manual_seed(0)
    perturbation = torch.tensor([[0.0, 0, 0], [1, 0, 0], [1, 1, 0], [0, 0, 1], [1, 1, 1]])
    shift, logit = torch.randn(4, 3, 2) * 2, torch.randn(4, 3, 2) * 2  # 4 sets of tables
    z = torch.randn(4, 5, 2) * 2
    got = shift_mixture_log_prob(z, perturbation, shift, logit)
    assert got.shape == (4, 5, 2)
    for table in range(4):
        want = shift_mixture(perturbation, shift[table], torch.sigmoid(logit[table])).log_prob(
            z[table])
        assert torch.allclose(got[table], want, atol=1e-4)


def test_log_prob_from_logits_of_single_perturbations_and_controls_has_finite_gradients():
    perturbation = torch.tensor([[0.0, 0], [1, 0], [0, 1]])
    shift = torch.tensor([[1.0], [-2.0]], requires_grad=True)
    logit = torch.tensor([[0.5], [-1.0]], requires_grad=True)
    z = torch.tensor([[0.3], [1.2], [-1.5]])
    got = shift_mixture_log_prob(z, perturbation, shift, logit)
    want = shift_mixture(perturbation, shift, torch.sigmoid(logit)).log_prob(z)
    assert torch.allclose(got, want, atol=1e-5)
    got.sum().backward()
    assert torch.isfinite(shift.grad).all() and torch.isfinite(logit.grad).all()
    assert shift.grad.abs().min() > 0 and logit.grad.abs().min() > 0


def test_log_prob_from_logits_accepts_a_perturbation_of_another_float_type():
    perturbation = torch.tensor([[0.0, 0], [1, 0], [1, 1]], dtype=torch.float64)
    shift, logit, z = torch.randn(2, 3), torch.randn(2, 3), torch.randn(3, 3)
    got = shift_mixture_log_prob(z, perturbation, shift, logit)
    want = shift_mixture(perturbation.float(), shift, torch.sigmoid(logit)).log_prob(z)
    assert got.dtype == torch.float32 and torch.allclose(got, want, atol=1e-4)


def test_log_prob_matches_the_mixture_of_normals_it_offers():
    """The closed-form log density against torch's MixtureSameFamily of the same components,
    with controls, single perturbations and combinations, and leading sample dimensions."""
    torch.manual_seed(1)
    perturbation = torch.tensor([[0.0, 0, 0, 0], [0, 1, 0, 0], [1, 0, 1, 0], [1, 1, 0, 1]])
    shift, probability = torch.randn(4, 3) * 3, torch.rand(4, 3)
    law = shift_mixture(perturbation, shift, probability)
    z = torch.randn(2, 4, 3) * 2
    want = law.as_mixture().log_prob(z)
    assert want.shape == law.log_prob(z).shape == (2, 4, 3)
    assert torch.allclose(law.log_prob(z), want, atol=1e-4)
    assert law.component_distribution.batch_shape == (4, 3, 8)  # 2^3 subsets
    expanded = law.expand((2, 4, 3))
    assert expanded.batch_shape == (2, 4, 3)
    assert torch.allclose(expanded.log_prob(z), want, atol=1e-4)
    assert torch.allclose(expanded.as_mixture().log_prob(z), want, atol=1e-4)


def test_mean_and_variance_are_the_mixtures():
    perturbation = torch.tensor([[0.0, 0], [1, 0], [1, 1]])
    shift, probability = torch.tensor([[2.0, -1.0], [0.5, 3.0]]), torch.tensor([[0.3, 0.9],
                                                                               [0.6, 0.2]])
    law = shift_mixture(perturbation, shift, probability)
    mixture = law.as_mixture()
    assert torch.allclose(law.mean, mixture.mean, atol=1e-5)
    assert torch.allclose(law.variance, mixture.variance, atol=1e-4)
    assert law.mean[0].abs().max() == 0 and torch.allclose(law.variance[0], torch.ones(2))


def test_single_perturbation_log_prob_has_gradients_only_where_the_cell_has_one():
    shift = torch.tensor([[1.0, -2.0], [3.0, 0.5]], requires_grad=True)
    probability = torch.tensor([[0.4, 0.7], [0.2, 0.5]], requires_grad=True)
    perturbation = torch.tensor([[0.0, 0], [1, 0], [1, 0]])  # row 1 of the tables is unused
    law = shift_mixture(perturbation, shift, probability, n_max=1)
    law.log_prob(torch.randn(3, 2)).sum().backward()
    assert torch.isfinite(shift.grad).all() and torch.isfinite(probability.grad).all()
    assert shift.grad[0].abs().min() > 0 and probability.grad[0].abs().min() > 0
    assert shift.grad[1].abs().max() == 0 and probability.grad[1].abs().max() == 0
