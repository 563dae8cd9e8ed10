"""Free bits: closed-form objective on hand-made programs, what it leaves free, and its errors."""

import pyro
import pyro.distributions as dist
import pytest
import torch

from pyro_causalcell import CellData, SparseShiftVAE, fit
from pyro_causalcell.distributions import shift_mixture
from pyro_causalcell.distributions.coordinate_mixture import CoordinateMixture
from pyro_causalcell.infer import DeviceTraceELBO, FreeBitsELBO
from pyro_causalcell.infer.checkpoint import CheckpointMismatchError
from pyro_causalcell.infer.free_bits import coordinate_log_prob
from pyro_causalcell.simulate import sparse_shift

N_CELLS, K = 6, 3


def program(loc: torch.Tensor, subsample: torch.Tensor | None = None):
    """Model and guide with a per-cell latent ``z`` (prior N(0, 1)), an observed ``x`` and a
    global ``g`` outside the cells plate."""
    def model():
        g = pyro.sample("g", dist.Normal(0.0, 1.0))
        with pyro.plate("cells", N_CELLS, subsample=subsample):
            z = pyro.sample("z", dist.Normal(torch.zeros(K), 1.0).to_event(1))
            pyro.sample("x", dist.Normal(z.sum(-1) + g, 1.0), obs=torch.ones(z.shape[0]))

    def guide():
        pyro.sample("g", dist.Normal(0.3, 0.5))
        with pyro.plate("cells", N_CELLS, subsample=subsample) as index:
            pyro.sample("z", dist.Normal(loc[index], 0.1).to_event(1))
    return model, guide


def expected_loss(loc, free_bits, seed, subsample=None):
    """Free-bits loss written out from the same random draws."""
    model, guide = program(loc, subsample)
    pyro.set_rng_seed(seed)
    guide_trace = pyro.poutine.trace(guide).get_trace()
    g, z = guide_trace.nodes["g"]["value"], guide_trace.nodes["z"]["value"]
    scale = N_CELLS / len(z)
    index = torch.arange(N_CELLS) if subsample is None else subsample
    kl = dist.Normal(loc[index], 0.1).log_prob(z) - dist.Normal(0.0, 1.0).log_prob(z)
    per_coordinate = torch.clamp(scale * kl.sum(0), min=free_bits * scale * len(z))
    log_x = dist.Normal(z.sum(-1) + g, 1.0).log_prob(torch.ones(len(z))).sum() * scale
    kl_g = dist.Normal(0.3, 0.5).log_prob(g) - dist.Normal(0.0, 1.0).log_prob(g)
    return per_coordinate.sum() + kl_g - log_x


@pytest.mark.parametrize("subsample", [None, torch.tensor([0, 2, 5])])
def test_free_bits_loss_matches_closed_form(subsample):
    # KL per cell: coordinate 0 ~4 nats, coordinates 1 and 2 ~1.8 (the guide's scale 0.1):
    # a floor of 2.5 nats binds on those two only
    loc = torch.zeros(N_CELLS, K)
    loc[:, 0] = torch.tensor([2.0, -2.0, 1.5, -1.5, 2.5, -2.5])
    model, guide = program(loc, subsample)
    for seed in range(3):
        pyro.set_rng_seed(seed)
        loss = FreeBitsELBO(2.5).differentiable_loss(model, guide)
        torch.testing.assert_close(loss, expected_loss(loc, 2.5, seed, subsample))
        pyro.set_rng_seed(seed)
        elbo_loss = DeviceTraceELBO().differentiable_loss(model, guide)
        assert loss > elbo_loss + 0.5 * 2 * N_CELLS * 0.5  # the floor lifts two coordinates


def test_free_bits_equal_the_elbo_above_the_floor():
    loc = torch.full((N_CELLS, K), 3.0)  # every coordinate ~3.4 nats per cell
    model, guide = program(loc)
    pyro.set_rng_seed(0)
    freed = FreeBitsELBO(0.5).differentiable_loss(model, guide)
    pyro.set_rng_seed(0)
    torch.testing.assert_close(freed, DeviceTraceELBO().differentiable_loss(model, guide))


def test_coordinates_under_the_floor_get_no_kl_gradient():
    # with no likelihood, only the KL terms pull on the guide: coordinate 0 (4.5 nats per cell,
    # above the floor) is pulled towards the prior, coordinates 1-2 (q = p: 0 nats) not at all
    loc = torch.zeros(N_CELLS, K)
    loc[:, 0] = 3.0
    loc.requires_grad_(True)

    def model():
        with pyro.plate("cells", N_CELLS):
            pyro.sample("z", dist.Normal(torch.zeros(K), 1.0).to_event(1))

    def guide():
        with pyro.plate("cells", N_CELLS):
            pyro.sample("z", dist.Normal(loc, 1.0).to_event(1))
    pyro.set_rng_seed(0)
    FreeBitsELBO(1.0).differentiable_loss(model, guide).backward()
    assert (loc.grad[:, 0] > 0).all()
    assert torch.equal(loc.grad[:, 1:], torch.zeros(N_CELLS, K - 1))


def test_coordinate_log_prob_sums_to_log_prob():
    torch.manual_seed(0)
    value = torch.randn(4, K)
    normal = dist.Normal(torch.randn(4, K), 1.5).to_event(1)
    mixed = CoordinateMixture(dist.Normal(torch.zeros(4, K), 1.0), dist.Normal(2.0, 0.5),
                              torch.tensor([1.0, 0.0, 1.0]))
    perturbation = torch.eye(4)[:, :2]
    shifted = shift_mixture(perturbation, torch.randn(2, K), torch.rand(2, K)).to_event(1)
    for fn in (normal, mixed, shifted):
        per_coordinate = coordinate_log_prob(fn, value)
        assert per_coordinate.shape == (4, K)
        torch.testing.assert_close(per_coordinate.sum(-1), fn.log_prob(value))


def test_free_bits_refuse_a_density_that_does_not_factorise():
    fn = dist.MultivariateNormal(torch.zeros(2), torch.eye(2))
    with pytest.raises(ValueError, match="free bits need a density per latent coordinate, but "
                                         "MultivariateNormal has events of shape"):
        coordinate_log_prob(fn, torch.zeros(2))


def test_free_bits_refuse_a_guide_that_is_not_reparameterised():
    def model():
        with pyro.plate("cells", 3):
            pyro.sample("c", dist.Bernoulli(0.5))

    def guide():
        with pyro.plate("cells", 3):
            pyro.sample("c", dist.Bernoulli(0.3))
    with pytest.raises(ValueError, match="free bits need a reparameterised guide, but site 'c'"):
        FreeBitsELBO(0.5).differentiable_loss(model, guide)


@pytest.mark.parametrize("bad", [0.0, -1.0, float("nan")])
def test_free_bits_elbo_refuses_a_floor_that_is_not_positive(bad):
    with pytest.raises(ValueError, match="free_bits must be > 0 nats"):
        FreeBitsELBO(bad)


@pytest.fixture(scope="module")
def screen():
    adata = sparse_shift(n_latent=3, n_genes=40, n_perturbations=4, n_cells_per_perturbation=30,
                         seed=0)
    return CellData.from_anndata(adata, perturbation_key="perturbation")


def test_fit_trains_on_free_bits_and_validates_on_the_elbo(screen):
    # a floor of 100 nats on each of 3 coordinates puts ~300 nats per cell into the training
    # objective, none into the validation ELBO
    model = SparseShiftVAE(screen.schema, n_latent=3, n_hidden=16)
    freed = fit(model, screen, max_epochs=2, batch_size=40, free_bits=100.0, progress=False)
    model = SparseShiftVAE(screen.schema, n_latent=3, n_hidden=16)
    plain = fit(model, screen, max_epochs=2, batch_size=40, progress=False)
    assert freed.train_elbo[-1] < plain.train_elbo[-1] - 250
    assert abs(freed.validation_elbo[-1] - plain.validation_elbo[-1]) < 30


@pytest.mark.parametrize(("kwargs", "message"), [
    ({"free_bits": -0.5}, r"free_bits must be >= 0 nats \(0: the ELBO itself\), got -0.5"),
    ({"free_bits": 0.5, "elbo": DeviceTraceELBO()},
     r"give free_bits or elbo, not both: free_bits=0.5 trains on FreeBitsELBO\(0.5\)"),
])
def test_fit_refuses_bad_free_bits(screen, kwargs, message):
    model = SparseShiftVAE(screen.schema, n_latent=3, n_hidden=16)
    with pytest.raises(ValueError, match=message):
        fit(model, screen, max_epochs=1, progress=False, **kwargs)


@pytest.mark.parametrize(("first", "then", "listed"), [
    (0.5, 0.0, "free_bits: 0.5 then, the default now"),
    (0.0, 0.5, "free_bits: the default then, 0.5 now"),
])
def test_a_checkpoint_resumes_only_with_its_free_bits(screen, tmp_path, first, then, listed):
    path = tmp_path / "fit.ckpt"
    model = SparseShiftVAE(screen.schema, n_latent=3, n_hidden=16)
    fit(model, screen, max_epochs=1, batch_size=40, free_bits=first, checkpoint=path,
        progress=False)
    with pytest.raises(CheckpointMismatchError, match=listed):
        fit(model, screen, max_epochs=2, batch_size=40, free_bits=then, checkpoint=path,
            progress=False)
