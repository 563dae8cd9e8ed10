"""``scale_latents``: latent sites are down-weighted, observed sites and factors are not."""

from __future__ import annotations

import pyro
import pyro.distributions as dist
import pytest
import torch
from pyro import poutine
from pyro.infer import Trace_ELBO
from pyro.poutine.util import site_is_subsample

from pyro_causalcell.handlers import LatentScaleMessenger, scale_latents

pytestmark = pytest.mark.usefixtures("seeded")

DATA = torch.tensor([0.3, -1.2, 2.0, 0.7])
LATENTS = ("loc", "z")
OBSERVED = ("x", "penalty")


def model(data=DATA):
    loc = pyro.sample("loc", dist.Normal(0.0, 1.0))
    with pyro.plate("cells", len(data)):
        z = pyro.sample("z", dist.Normal(loc, 1.0))
        pyro.sample("x", dist.Normal(z, 0.5), obs=data)
    pyro.factor("penalty", -(loc**2))


def guide(data=DATA):
    q_loc = pyro.sample("loc", dist.Normal(0.1, 0.3))
    with pyro.plate("cells", len(data)):
        pyro.sample("z", dist.Normal(q_loc + data / 2, 0.4))


def log_prob_sums(fn, *args) -> dict[str, float]:
    trace = poutine.trace(fn).get_trace(*args)
    trace.compute_log_prob()
    return {name: site["log_prob_sum"].item() for name, site in trace.nodes.items()
            if site["type"] == "sample" and not site_is_subsample(site)}, trace


def scaled_and_reference(weight, fn=model, *args):
    scaled, trace = log_prob_sums(scale_latents(fn, weight=weight), *args)
    reference, _ = log_prob_sums(poutine.replay(fn, trace=trace), *args)
    return scaled, reference, trace


@pytest.mark.parametrize("weight", [0.0, 0.25, 1.0, 3.0])
def test_only_latent_sites_are_scaled(weight):
    scaled, reference, trace = scaled_and_reference(weight)
    assert set(scaled) == {*LATENTS, *OBSERVED}
    for name in LATENTS:
        assert not trace.nodes[name]["is_observed"]
        assert scaled[name] == pytest.approx(weight * reference[name], rel=1e-6, abs=1e-7)
        assert trace.nodes[name]["scale"] == pytest.approx(weight)
    for name in OBSERVED:
        assert trace.nodes[name]["is_observed"]
        assert scaled[name] == pytest.approx(reference[name], rel=1e-6)
        assert trace.nodes[name]["scale"] == 1.0
    assert reference["z"] != 0.0 and reference["loc"] != 0.0  # the check is not vacuous


def test_weight_one_leaves_the_program_unchanged():
    scaled, reference, _ = scaled_and_reference(1.0)
    assert scaled == pytest.approx(reference)


def test_guide_sites_are_all_scaled():
    scaled, reference, _ = scaled_and_reference(0.1, guide)
    assert set(scaled) == set(LATENTS)
    for name in LATENTS:
        assert scaled[name] == pytest.approx(0.1 * reference[name], rel=1e-6)


def test_composes_with_subsampling_and_poutine_scale():
    def subsampled():
        with pyro.plate("cells", 100, subsample=torch.arange(4)):  # plate scale 25
            z = pyro.sample("z", dist.Normal(0.0, 1.0))
            with poutine.scale(scale=2.0):
                pyro.sample("x", dist.Normal(z, 1.0), obs=DATA)

    trace = poutine.trace(scale_latents(subsampled, weight=0.5)).get_trace()
    assert trace.nodes["z"]["scale"] == pytest.approx(25 * 0.5)
    assert trace.nodes["x"]["scale"] == pytest.approx(25 * 2.0)


def test_conditioned_site_inside_counts_as_observed():
    conditioned = poutine.condition(model, data={"loc": torch.tensor(0.4)})
    scaled, reference, trace = scaled_and_reference(0.2, conditioned)
    assert trace.nodes["loc"]["is_observed"]
    assert scaled["loc"] == pytest.approx(reference["loc"])
    assert scaled["z"] == pytest.approx(0.2 * reference["z"])


def test_context_manager_form():
    with scale_latents(weight=0.5) as messenger:
        trace = poutine.trace(model).get_trace()
    assert isinstance(messenger, LatentScaleMessenger)
    assert trace.nodes["z"]["scale"] == pytest.approx(0.5)
    assert trace.nodes["x"]["scale"] == 1.0
    # nothing leaks outside the context
    assert poutine.trace(model).get_trace().nodes["z"]["scale"] == 1.0


def test_elbo_down_weights_only_the_kl_part():
    weight = 0.3
    pyro.set_rng_seed(1)
    loss = Trace_ELBO().loss(scale_latents(model, weight=weight),
                             scale_latents(guide, weight=weight))
    pyro.set_rng_seed(1)
    guide_lp, guide_trace = log_prob_sums(guide)
    model_lp, _ = log_prob_sums(poutine.replay(model, trace=guide_trace))
    likelihood = model_lp["x"] + model_lp["penalty"]
    kl = sum(guide_lp[n] - model_lp[n] for n in LATENTS)
    assert loss == pytest.approx(-(likelihood - weight * kl), rel=1e-5)
    assert loss != pytest.approx(-(likelihood - kl), rel=1e-3)


@pytest.mark.parametrize("weight", [-0.1, -1.0])
def test_negative_weight_raises(weight):
    with pytest.raises(ValueError, match="weight must be >= 0"):
        scale_latents(model, weight=weight)
    with pytest.raises(ValueError, match="weight must be >= 0"):
        LatentScaleMessenger(weight)
