"""MLP, GaussianEncoder and CountDecoder: shapes, constraints, covariates, likelihood variants."""

from __future__ import annotations

import pyro.distributions as pdist
import pytest
import torch
from torch import nn

from pyro_causalcell.distributions import NegativeBinomial, ZeroInflatedNegativeBinomial
from pyro_causalcell.nn import MLP, CountDecoder, GaussianEncoder

pytestmark = pytest.mark.usefixtures("seeded")

BATCH, GENES, LATENT, COVARIATES = 6, 9, 3, 2


@pytest.fixture
def z(seeded) -> torch.Tensor:
    return torch.randn(BATCH, LATENT)


@pytest.fixture
def library() -> torch.Tensor:
    return torch.tensor([1.0, 10.0, 250.0, 1e3, 3e4, 7.5])


@pytest.fixture
def covariates() -> torch.Tensor:
    return torch.nn.functional.one_hot(torch.arange(BATCH) % COVARIATES, COVARIATES).float()


def counts_like(shape) -> torch.Tensor:
    return torch.poisson(torch.full(shape, 3.0))


def swapped(covariates: torch.Tensor) -> torch.Tensor:
    return covariates.flip(-1)


# ---------------------------------------------------------------------- MLP
@pytest.mark.parametrize("hidden", [(), (16,), (16, 8)])
def test_mlp_shapes_and_layer_count(hidden):
    mlp = MLP(5, 4, hidden)
    assert len(mlp.layers) == len(hidden) + 1
    assert mlp(torch.randn(7, 5)).shape == (7, 4)


def test_mlp_injects_covariates_in_every_layer(covariates):
    mlp = MLP(5, 4, (16, 8), n_covariates=COVARIATES)
    assert [layer.in_features for layer in mlp.layers] == [5 + COVARIATES, 16 + COVARIATES,
                                                           8 + COVARIATES]
    x = torch.randn(BATCH, 5)
    out = mlp(x, covariates)
    assert out.shape == (BATCH, 4)
    assert not torch.allclose(out, mlp(x, swapped(covariates)))


def test_mlp_without_hidden_layers_is_linear():
    mlp = MLP(3, 2, ())
    x = torch.randn(4, 3)
    torch.testing.assert_close(mlp(2 * x) - mlp(x), mlp(x) - mlp(torch.zeros_like(x)))


def test_layer_norm_treats_each_cell_on_its_own():
    mlp = MLP(5, 4, (16,), norm="layer")
    x = torch.randn(8, 5)
    torch.testing.assert_close(mlp(x)[:3], mlp(x[:3]))
    hidden = mlp.norms[0](mlp.layers[0](x))
    torch.testing.assert_close(hidden.mean(-1), torch.zeros(8), atol=1e-5, rtol=0)


def test_batch_norm_standardises_in_training_and_handles_one_cell():
    mlp = MLP(5, 4, (16,), norm="batch")
    mlp.train()
    x = 3.0 + 2.0 * torch.randn(64, 5)
    hidden = mlp.norms[0](mlp.layers[0](x))
    torch.testing.assert_close(hidden.mean(0), torch.zeros(16), atol=1e-4, rtol=0)
    assert mlp(x[:1]).shape == (1, 4)  # a last minibatch of one cell uses running statistics
    mlp.eval()
    torch.testing.assert_close(mlp(x)[:3], mlp(x[:3]))


def test_unknown_norm_is_refused():
    with pytest.raises(ValueError, match="norm='group'; choose one of"):
        MLP(5, 4, (16,), norm="group")


def test_mlp_dropout_only_in_training():
    mlp = MLP(5, 4, (64,), dropout=0.5)
    x = torch.randn(8, 5)
    mlp.eval()
    torch.testing.assert_close(mlp(x), mlp(x))
    mlp.train()
    torch.manual_seed(0)
    assert not torch.allclose(mlp(x), mlp(x))


def test_mlp_activation_is_configurable():
    mlp = MLP(3, 2, (4,), activation=nn.Tanh)
    assert isinstance(mlp.activation, nn.Tanh)


# ---------------------------------------------------------------------- encoder
def test_encoder_shapes_and_positive_scale():
    encoder = GaussianEncoder(GENES, LATENT, (16,))
    counts = counts_like((BATCH, GENES))
    counts[0] = 0.0
    counts[1] = 1e5  # extreme but finite inputs
    loc, scale = encoder(counts)
    assert loc.shape == scale.shape == (BATCH, LATENT)
    assert torch.isfinite(loc).all() and torch.isfinite(scale).all()
    assert (scale > 0).all()


def test_encoder_scale_floor():
    encoder = GaussianEncoder(GENES, LATENT, (), min_scale=0.25)
    with torch.no_grad():
        encoder.net.layers[-1].bias[LATENT:] = -1e4  # softplus -> 0
    _, scale = encoder(counts_like((BATCH, GENES)))
    torch.testing.assert_close(scale, torch.full((BATCH, LATENT), 0.25))


def test_encoder_reads_log1p_counts():
    encoder = GaussianEncoder(GENES, LATENT, ())
    counts = counts_like((BATCH, GENES))
    loc, _ = encoder(counts)
    expected = encoder.net(torch.log1p(counts))[:, :LATENT]
    torch.testing.assert_close(loc, expected)


def test_encoder_covariates_change_output(covariates):
    encoder = GaussianEncoder(GENES, LATENT, (16,), n_covariates=COVARIATES)
    counts = counts_like((BATCH, GENES))
    loc, scale = encoder(counts, covariates)
    loc2, scale2 = encoder(counts, swapped(covariates))
    assert loc.shape == (BATCH, LATENT)
    assert not torch.allclose(loc, loc2)
    assert not torch.allclose(scale, scale2)


# ---------------------------------------------------------------------- decoder
@pytest.mark.parametrize("likelihood", ["nb", "zinb", "poisson"])
def test_decoder_mean_rows_sum_to_library(likelihood, z, library):
    decoder = CountDecoder(LATENT, GENES, (16,), likelihood=likelihood)
    decoded = decoder(z, library)
    assert decoded["mean"].shape == decoded["log_mean"].shape == (BATCH, GENES)
    assert (decoded["mean"] > 0).all()
    torch.testing.assert_close(decoded["mean"].sum(-1), library, rtol=1e-5, atol=0)
    torch.testing.assert_close(decoded["log_mean"].exp(), decoded["mean"])
    assert ("gate_logits" in decoded) == (likelihood == "zinb")


def test_decoder_proportions_do_not_depend_on_library(z, library):
    decoder = CountDecoder(LATENT, GENES, (16,))
    first = decoder(z, library)["mean"] / library.unsqueeze(-1)
    second = decoder(z, 3 * library)["mean"] / (3 * library).unsqueeze(-1)
    torch.testing.assert_close(first, second)


def test_decoder_covariates_change_output(z, library, covariates):
    decoder = CountDecoder(LATENT, GENES, (16,), n_covariates=COVARIATES)
    mean = decoder(z, library, covariates)["mean"]
    other = decoder(z, library, swapped(covariates))["mean"]
    assert not torch.allclose(mean, other)
    torch.testing.assert_close(other.sum(-1), library, rtol=1e-5, atol=0)


def test_nb_decoder_distribution(z, library):
    decoder = CountDecoder(LATENT, GENES, (16,), likelihood="nb")
    with torch.no_grad():
        decoder.log_inverse_dispersion.copy_(torch.linspace(-2, 2, GENES).unsqueeze(0))
    decoded = decoder(z, library)
    d = decoder.distribution(decoded)
    assert isinstance(d.base_dist, NegativeBinomial)
    assert d.batch_shape == (BATCH,) and d.event_shape == (GENES,)
    x = counts_like((BATCH, GENES))
    theta = torch.linspace(-2, 2, GENES).exp()
    expected = pdist.GammaPoisson(theta, theta / decoded["mean"]).log_prob(x).sum(-1)
    torch.testing.assert_close(d.log_prob(x), expected, rtol=1e-4, atol=1e-3)
    assert decoder.inverse_dispersion().shape == (GENES,)


def test_zinb_decoder_distribution(z, library):
    decoder = CountDecoder(LATENT, GENES, (16,), likelihood="zinb")
    assert decoder.net.layers[-1].out_features == 2 * GENES
    decoded = decoder(z, library)
    assert decoded["gate_logits"].shape == (BATCH, GENES)
    d = decoder.distribution(decoded)
    assert isinstance(d.base_dist, ZeroInflatedNegativeBinomial)
    assert d.batch_shape == (BATCH,) and d.event_shape == (GENES,)
    x = counts_like((BATCH, GENES))
    theta = decoder.inverse_dispersion()
    expected = pdist.ZeroInflatedNegativeBinomial(
        total_count=theta, logits=decoded["log_mean"] - theta.log(),
        gate_logits=decoded["gate_logits"]).log_prob(x).sum(-1)
    torch.testing.assert_close(d.log_prob(x), expected, rtol=1e-4, atol=1e-3)


def test_poisson_decoder_distribution(z, library):
    decoder = CountDecoder(LATENT, GENES, (16,), likelihood="poisson")
    decoded = decoder(z, library)
    d = decoder.distribution(decoded)
    assert isinstance(d.base_dist, pdist.Poisson)
    assert d.event_shape == (GENES,)
    x = counts_like((BATCH, GENES))
    torch.testing.assert_close(d.log_prob(x),
                               pdist.Poisson(decoded["mean"]).log_prob(x).sum(-1))


def test_gaussian_decoder_models_log_normalised_expression(z, library):
    decoder = CountDecoder(LATENT, GENES, (16,), likelihood="gaussian")
    with torch.no_grad():
        decoder.log_inverse_dispersion.fill_(-1.0)
    decoded = decoder(z, library)
    assert set(decoded) == {"mean"} and decoded["mean"].shape == (BATCH, GENES)
    d = decoder.distribution(decoded)
    assert isinstance(d.base_dist, pdist.Normal) and d.event_shape == (GENES,)
    counts = torch.tensor([[0.0, 1.0, 3.0], [2.0, 2.0, 0.0]])
    expected = torch.log1p(counts / counts.sum(-1, keepdim=True) * 1e4)
    torch.testing.assert_close(CountDecoder(LATENT, 3, likelihood="gaussian")
                               .observation(counts), expected)
    assert torch.equal(CountDecoder(LATENT, 3).observation(counts), counts)
    y = torch.randn(BATCH, GENES)
    torch.testing.assert_close(
        d.log_prob(y), pdist.Normal(decoded["mean"], torch.exp(torch.tensor(-1.0)))
        .log_prob(y).sum(-1))


def test_gene_domain_dispersion(z, library):
    n_domains = 3
    decoder = CountDecoder(LATENT, GENES, (16,), dispersion="gene-domain", n_domains=n_domains)
    assert decoder.log_inverse_dispersion.shape == (n_domains, GENES)
    with torch.no_grad():
        decoder.log_inverse_dispersion.copy_(
            torch.tensor([-1.0, 0.0, 2.0]).unsqueeze(-1).expand(n_domains, GENES))
    domain = torch.tensor([0, 1, 2, 2, 1, 0])
    theta = decoder.inverse_dispersion(domain)
    assert theta.shape == (BATCH, GENES)
    torch.testing.assert_close(theta[:, 0], torch.tensor([-1.0, 0.0, 2.0, 2.0, 0.0, -1.0]).exp())
    decoded = decoder(z, library)
    d = decoder.distribution(decoded, domain)
    assert d.batch_shape == (BATCH,)
    x = counts_like((BATCH, GENES))
    expected = pdist.GammaPoisson(theta, theta / decoded["mean"]).log_prob(x).sum(-1)
    torch.testing.assert_close(d.log_prob(x), expected, rtol=1e-4, atol=1e-3)
    # the domain actually matters for the likelihood
    assert not torch.allclose(d.log_prob(x),
                              decoder.distribution(decoded, torch.zeros_like(domain)).log_prob(x))


def test_decoder_gradients_reach_every_parameter(z, library):
    decoder = CountDecoder(LATENT, GENES, (16,), likelihood="zinb")
    decoded = decoder(z, library)
    decoder.distribution(decoded).log_prob(counts_like((BATCH, GENES))).sum().backward()
    for name, parameter in decoder.named_parameters():
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all(), name
        assert parameter.grad.abs().sum() > 0, name


@pytest.mark.parametrize("kwargs, message", [
    (dict(likelihood="lognormal"), "likelihood='lognormal'; choose one of"),
    (dict(dispersion="cell"), "dispersion='cell'; choose one of"),
    (dict(dispersion="gene-domain"), "needs data with domains"),
    (dict(dispersion="gene-domain", n_domains=0), "needs data with domains"),
])
def test_decoder_rejects_bad_options(kwargs, message):
    with pytest.raises(ValueError, match=message):
        CountDecoder(LATENT, GENES, (16,), **kwargs)
