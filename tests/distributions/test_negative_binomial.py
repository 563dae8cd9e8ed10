"""``NegativeBinomial`` / ``ZeroInflatedNegativeBinomial`` against Pyro's reference
implementations, over wide parameter ranges, plus shapes, gradients and moments."""

from __future__ import annotations

import pyro.distributions as pdist
import pytest
import torch

from pyro_causalcell.distributions import NegativeBinomial, ZeroInflatedNegativeBinomial

pytestmark = pytest.mark.usefixtures("seeded")

F64 = torch.float64


def grid():
    """``(mu, theta, x)`` broadcastable to ``(10, 8, 9)``: mu 1e-4..1e5, theta 1e-3..1e4,
    counts 0..1e4."""
    mu = torch.logspace(-4, 5, 10, dtype=F64).view(-1, 1, 1)
    theta = torch.logspace(-3, 4, 8, dtype=F64).view(1, -1, 1)
    x = torch.tensor([0, 1, 2, 3, 7, 50, 300, 2000, 10000], dtype=F64).view(1, 1, -1)
    return mu, theta, x


def mean_kwargs(mode: str, mu: torch.Tensor) -> dict:
    return {"mean": dict(mean=mu), "log_mean": dict(log_mean=mu.log()),
            "both": dict(mean=mu, log_mean=mu.log())}[mode]


def assert_log_prob_close(actual: torch.Tensor, expected: torch.Tensor) -> None:
    assert actual.shape == expected.shape
    assert actual.dtype == F64
    assert torch.isfinite(actual).all()
    # absolute error relative to the magnitude of the log-density (|log p| reaches ~1e5)
    error = (actual - expected).abs() / expected.abs().clamp_min(1.0)
    assert error.max() < 1e-8, f"max scaled error {error.max():.3g}"


# ---------------------------------------------------------------------- log_prob
@pytest.mark.parametrize("mode", ["mean", "log_mean", "both"])
def test_nb_log_prob_matches_gamma_poisson(mode):
    mu, theta, x = grid()
    nb = NegativeBinomial(inverse_dispersion=theta, **mean_kwargs(mode, mu))
    assert nb.batch_shape == (10, 8, 1)
    expected = pdist.GammaPoisson(concentration=theta, rate=theta / mu).log_prob(x)
    assert_log_prob_close(nb.log_prob(x), expected)


@pytest.mark.parametrize("mode", ["mean", "log_mean", "both"])
def test_zinb_log_prob_matches_pyro(mode):
    mu, theta, x = grid()
    mu, theta, x = mu.unsqueeze(-1), theta.unsqueeze(-1), x.unsqueeze(-1)
    gate_logits = torch.tensor([-8.0, -1.0, 0.0, 2.5, 10.0], dtype=F64)
    zinb = ZeroInflatedNegativeBinomial(inverse_dispersion=theta, gate_logits=gate_logits,
                                        **mean_kwargs(mode, mu))
    assert zinb.batch_shape == (10, 8, 1, 5)
    expected = pdist.ZeroInflatedNegativeBinomial(
        total_count=theta, logits=mu.log() - theta.log(), gate_logits=gate_logits).log_prob(x)
    assert_log_prob_close(zinb.log_prob(x), expected)


def test_zinb_with_very_negative_gate_is_the_nb():
    mu, theta, x = grid()
    nb = NegativeBinomial(mu, theta).log_prob(x)
    # log P(x=0) under the NB reaches -2.4e4 on this grid, so the gate must be far below that
    zinb = ZeroInflatedNegativeBinomial(mu, theta, gate_logits=torch.tensor(-1e6, dtype=F64))
    torch.testing.assert_close(zinb.log_prob(x), nb, rtol=1e-12, atol=1e-12)


def test_nb_probabilities_sum_to_one():
    mu = torch.tensor([0.3, 4.0, 25.0], dtype=F64)
    theta = torch.tensor([0.5, 2.0, 40.0], dtype=F64)
    x = torch.arange(0, 3000, dtype=F64).unsqueeze(-1)
    total = NegativeBinomial(mu, theta).log_prob(x).exp().sum(0)
    torch.testing.assert_close(total, torch.ones(3, dtype=F64), rtol=0, atol=1e-9)
    zinb_total = ZeroInflatedNegativeBinomial(mu, theta, gate_logits=torch.zeros(3, dtype=F64)
                                              ).log_prob(x).exp().sum(0)
    torch.testing.assert_close(zinb_total, torch.ones(3, dtype=F64), rtol=0, atol=1e-9)


def test_per_gene_dispersion_broadcasts_against_cells():
    mu = torch.rand(4, 3, dtype=F64) * 10 + 0.1
    theta = torch.tensor([0.1, 1.0, 30.0], dtype=F64)  # one per gene
    x = torch.tensor([[0.0, 1.0, 5.0]], dtype=F64).expand(4, 3)
    lp = NegativeBinomial(log_mean=mu.log(), inverse_dispersion=theta).log_prob(x)
    expected = pdist.GammaPoisson(theta, theta / mu).log_prob(x)
    torch.testing.assert_close(lp, expected, rtol=1e-10, atol=1e-10)


def test_float32_log_prob_is_close():
    """float32 (what models train in) for dispersions up to 100; beyond that the
    ``theta*log(theta) - (x+theta)*log(theta+mu)`` cancellation costs digits, as in Pyro."""
    mu, theta, x = grid()
    theta = theta[:, :6]  # 1e-3 .. 1e2
    nb = NegativeBinomial(log_mean=mu.log().float(), inverse_dispersion=theta.float())
    lp = nb.log_prob(x.float())
    assert lp.dtype == torch.float32 and torch.isfinite(lp).all()
    expected = pdist.GammaPoisson(theta, theta / mu).log_prob(x)
    error = (lp.double() - expected).abs() / expected.abs().clamp_min(1.0)
    assert error.max() < 2e-3  # Pyro's own float32 GammaPoisson is off by ~6e-4 here


# ---------------------------------------------------------------------- gradients
@pytest.mark.parametrize("mode", ["mean", "log_mean", "both"])
@pytest.mark.parametrize("zero_inflated", [False, True])
def test_gradients_are_finite_at_extremes(mode, zero_inflated):
    mu0, theta0, x = grid()
    log_mu = mu0.log().clone().requires_grad_(True)
    log_theta = theta0.log().clone().requires_grad_(True)
    gate = torch.tensor(0.3, dtype=F64, requires_grad=True)
    mu = log_mu.exp()
    kwargs = {"mean": dict(mean=mu), "log_mean": dict(log_mean=log_mu),
              "both": dict(mean=mu, log_mean=log_mu)}[mode]
    if zero_inflated:
        d = ZeroInflatedNegativeBinomial(inverse_dispersion=log_theta.exp(), gate_logits=gate,
                                         **kwargs)
    else:
        d = NegativeBinomial(inverse_dispersion=log_theta.exp(), **kwargs)
    d.log_prob(x).sum().backward()
    assert torch.isfinite(log_mu.grad).all()
    assert torch.isfinite(log_theta.grad).all()
    assert (log_mu.grad != 0).any() and (log_theta.grad != 0).any()
    if zero_inflated:
        assert torch.isfinite(gate.grad)


def test_gradient_matches_pyro():
    mu0, theta0, x = grid()
    grads = []
    for impl in ("ours", "pyro"):
        log_mu = mu0.log().clone().requires_grad_(True)
        theta = theta0.clone().requires_grad_(True)
        if impl == "ours":
            lp = NegativeBinomial(log_mean=log_mu, inverse_dispersion=theta).log_prob(x)
        else:
            lp = pdist.GammaPoisson(theta, theta / log_mu.exp()).log_prob(x)
        lp.sum().backward()
        grads.append((log_mu.grad, theta.grad))
    for ours, theirs in zip(*grads):
        scaled = (ours - theirs).abs() / theirs.abs().clamp_min(1.0)
        assert scaled.max() < 1e-6


# ---------------------------------------------------------------------- shapes
def test_to_event_shapes():
    mu = torch.rand(5, 7, dtype=F64) + 0.5
    theta = torch.ones(7, dtype=F64)
    x = torch.randint(0, 5, (5, 7)).to(F64)
    nb = NegativeBinomial(mu, theta).to_event(1)
    assert nb.batch_shape == (5,) and nb.event_shape == (7,)
    lp = nb.log_prob(x)
    assert lp.shape == (5,)
    torch.testing.assert_close(lp, NegativeBinomial(mu, theta).log_prob(x).sum(-1))
    zinb = ZeroInflatedNegativeBinomial(mu, theta, gate_logits=torch.zeros(5, 7, dtype=F64)
                                        ).to_event(1)
    assert zinb.batch_shape == (5,) and zinb.event_shape == (7,)
    assert zinb.log_prob(x).shape == (5,)
    assert nb.sample().shape == (5, 7)
    assert zinb.sample((3,)).shape == (3, 5, 7)


def test_expand():
    mu = torch.tensor([1.0, 10.0, 100.0], dtype=F64)
    theta = torch.tensor([2.0, 2.0, 0.5], dtype=F64)
    x = torch.tensor([[0.0, 4.0, 150.0], [1.0, 9.0, 80.0]], dtype=F64)
    for make in (lambda: NegativeBinomial(mu, theta),
                 lambda: NegativeBinomial(log_mean=mu.log(), inverse_dispersion=theta),
                 lambda: ZeroInflatedNegativeBinomial(mu, theta,
                                                      gate_logits=torch.tensor([-1.0, 0.0, 1.0],
                                                                               dtype=F64))):
        base = make()
        expanded = base.expand((2, 3))
        assert type(expanded) is type(base)
        assert expanded.batch_shape == (2, 3)
        assert expanded.mean.shape == (2, 3) and expanded.variance.shape == (2, 3)
        torch.testing.assert_close(expanded.mean, base.mean.expand(2, 3))
        torch.testing.assert_close(expanded.log_prob(x), base.log_prob(x))
        assert expanded.sample().shape == (2, 3)
        assert expanded.to_event(1).log_prob(x).shape == (2,)


def test_zinb_gate_broadcasts_batch_shape():
    mu = torch.tensor([1.0, 2.0], dtype=F64)
    gate = torch.zeros(4, 2, dtype=F64)
    zinb = ZeroInflatedNegativeBinomial(mu, torch.tensor(1.0, dtype=F64), gate_logits=gate)
    assert zinb.batch_shape == (4, 2)
    assert zinb.mean.shape == (4, 2)
    assert zinb.sample().shape == (4, 2)


# ---------------------------------------------------------------------- moments
def test_nb_moments_closed_form():
    mu = torch.tensor([0.5, 20.0], dtype=F64)
    theta = torch.tensor([2.0, 0.5], dtype=F64)
    nb = NegativeBinomial(log_mean=mu.log(), inverse_dispersion=theta)
    torch.testing.assert_close(nb.mean, mu)
    torch.testing.assert_close(nb.variance, mu + mu**2 / theta)
    reference = pdist.GammaPoisson(theta, theta / mu)
    torch.testing.assert_close(nb.mean, reference.mean)
    torch.testing.assert_close(nb.variance, reference.variance)


def test_zinb_moments_closed_form():
    mu = torch.tensor([0.5, 20.0], dtype=F64)
    theta = torch.tensor([2.0, 0.5], dtype=F64)
    g = torch.tensor([-1.0, 0.7], dtype=F64)
    zinb = ZeroInflatedNegativeBinomial(mu, theta, gate_logits=g)
    reference = pdist.ZeroInflatedNegativeBinomial(total_count=theta,
                                                   logits=mu.log() - theta.log(), gate_logits=g)
    torch.testing.assert_close(zinb.mean, reference.mean)
    torch.testing.assert_close(zinb.variance, reference.variance)


@pytest.mark.parametrize("zero_inflated", [False, True])
def test_sample_moments_match_properties(zero_inflated):
    torch.manual_seed(0)
    mu = torch.tensor([0.2, 3.0, 40.0, 500.0], dtype=F64)
    theta = torch.tensor([5.0, 1.0, 0.5, 20.0], dtype=F64)
    if zero_inflated:
        d = ZeroInflatedNegativeBinomial(mu, theta,
                                         gate_logits=torch.tensor([0.0, -1.0, 1.0, -2.0],
                                                                  dtype=F64))
    else:
        d = NegativeBinomial(mu, theta)
    n = 200_000
    samples = d.sample((n,))
    assert samples.shape == (n, 4)
    assert (samples >= 0).all() and (samples == samples.round()).all()
    mean, variance = d.mean, d.variance
    # standard error of the sample mean is sqrt(var / n); allow 5 of them
    assert ((samples.mean(0) - mean).abs() < 5 * (variance / n).sqrt()).all()
    # the sample variance: within 5% (fourth moments are heavy for small theta)
    torch.testing.assert_close(samples.var(0), variance, rtol=0.05, atol=0.0)
    if zero_inflated:
        p_zero = d.log_prob(torch.zeros(4, dtype=F64)).exp()
        empirical = (samples == 0).to(F64).mean(0)
        assert ((empirical - p_zero).abs() < 5 * (p_zero * (1 - p_zero) / n).sqrt()).all()


# ---------------------------------------------------------------------- arguments
def test_needs_mean_or_log_mean():
    theta = torch.ones(3)
    with pytest.raises(ValueError, match="mean= or log_mean="):
        NegativeBinomial(inverse_dispersion=theta)
    with pytest.raises(ValueError, match="mean= or log_mean="):
        ZeroInflatedNegativeBinomial(inverse_dispersion=theta, gate_logits=torch.zeros(3))


def test_needs_inverse_dispersion():
    with pytest.raises(ValueError, match="inverse_dispersion="):
        NegativeBinomial(torch.ones(3))


def test_validation_rejects_non_integer_values():
    nb = NegativeBinomial(torch.ones(3), torch.ones(3), validate_args=True)
    with pytest.raises(ValueError):
        nb.log_prob(torch.tensor([0.5, 1.0, 2.0]))


def test_validation_rejects_non_positive_dispersion():
    with pytest.raises(ValueError):
        NegativeBinomial(torch.ones(3), torch.tensor([1.0, 0.0, 1.0]), validate_args=True)
