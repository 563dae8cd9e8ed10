r"""Exogenous noise of latent sites: abduction (value -> noise) and prediction (noise -> value).

A latent :math:`z` with mechanism :math:`p(z \mid \mathrm{pa})` is written as a deterministic
function of its parents and an exogenous noise :math:`u`. For the families used by the models:

- **Normal** ``Normal(loc, scale)``: :math:`z = \mathrm{loc} + \mathrm{scale}\cdot\epsilon`,
  so :math:`\epsilon = (z - \mathrm{loc}) / \mathrm{scale}` (exact abduction);
- **mixture of Normals** (``MixtureSameFamily``, e.g. a perturbation that hits a latent in
  some cells): the component is chosen by the Gumbel-max rule
  :math:`c = \arg\max_i (\ell_i + g_i)` with :math:`g_i \sim \mathrm{Gumbel}(0, 1)`; abduction
  draws the component from its posterior given :math:`z`, the Gumbels from their posterior
  given that component (Oberst and Sontag, 2019), and :math:`\epsilon` of that component;
  prediction picks :math:`\arg\max_i (\ell'_i + g_i)` under the new weights, so an unchanged
  mechanism gives back the same value;
- :class:`~pyro_causalcell.handlers.CoordinateMixture` (a stochastic intervention on some
  coordinates): each coordinate uses the noise of the family that generates it.

:class:`AbductionMessenger` records the noise of named sites while the factual program runs
with their values fixed; :class:`NoiseReplayMessenger` sets those sites from the recorded noise
in another (e.g. intervened) run of the program.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro.distributions as dist
import torch
from pyro.poutine.messenger import Messenger

from .stochastic_intervention import CoordinateMixture


@dataclass
class Noise:
    """Exogenous noise of one site's value.

    Attributes
    ----------
    epsilon : tensor, the site's shape
        Standardised Gaussian noise.
    gumbel : tensor, the site's shape + (n_components,), or None
        Gumbel noise of the mixture component choice (``None`` where never observed: a fresh
        draw from the prior is used then).
    """

    epsilon: torch.Tensor
    gumbel: torch.Tensor | None = None


def _unwrap(fn):
    """The coordinate-wise distribution under ``.to_event``."""
    while isinstance(fn, dist.Independent):
        fn = fn.base_dist
    return fn


def _component(components: torch.distributions.Normal, index: torch.Tensor):
    """``(loc, scale)`` of the mixture component ``index`` (site shape) of each coordinate."""
    index = index.unsqueeze(-1)
    return (components.loc.gather(-1, index).squeeze(-1),
            components.scale.gather(-1, index).squeeze(-1))


def _is_normal_mixture(fn) -> bool:
    return (isinstance(fn, torch.distributions.MixtureSameFamily)
            and isinstance(fn.component_distribution, torch.distributions.Normal))


def _unsupported(fn) -> NotImplementedError:
    return NotImplementedError(
        f"exogenous noise of a {type(fn).__name__} site is not supported; counterfactuals need "
        "per-cell latents from Normal, mixture-of-Normal or CoordinateMixture mechanisms "
        "(location-scale families)")


def _posterior_gumbels(logits: torch.Tensor, component: torch.Tensor) -> torch.Tensor:
    """Gumbel noise ``g`` with ``argmax(logits + g) == component`` (top-down sampling)."""
    gumbel = torch.distributions.Gumbel(torch.zeros_like(logits), torch.ones_like(logits))
    top = torch.logsumexp(logits, -1, keepdim=True) + gumbel.sample()[..., :1]
    others = logits + gumbel.sample()
    truncated = -torch.log(torch.exp(-top) + torch.exp(-others))  # each below the maximum
    chosen = torch.nn.functional.one_hot(component, logits.shape[-1]).bool()
    perturbed = torch.where(chosen, top.expand_as(logits), truncated)
    return perturbed - logits


def _abduct_coordinates(fn, value: torch.Tensor) -> Noise:
    if isinstance(fn, torch.distributions.Normal):
        return Noise((value - fn.loc) / fn.scale)
    if _is_normal_mixture(fn):
        components = fn.component_distribution
        logits = fn.mixture_distribution.logits
        joint = logits + components.log_prob(value.unsqueeze(-1))
        component = torch.distributions.Categorical(logits=joint).sample()
        loc, scale = _component(components, component)
        return Noise((value - loc) / scale, _posterior_gumbels(logits, component))
    if isinstance(fn, CoordinateMixture):
        base = _abduct_coordinates(fn.base, value)
        new = _abduct_coordinates(fn.replacement, value)
        hit = fn.mask > 0.5
        gumbel = new.gumbel
        if gumbel is not None:  # coordinates from the base mechanism revealed no component
            gumbel = torch.where(hit.unsqueeze(-1), gumbel, torch.full_like(gumbel, float("nan")))
        return Noise(torch.where(hit, new.epsilon, base.epsilon), gumbel)
    raise _unsupported(fn)


def _predict_coordinates(fn, noise: Noise) -> torch.Tensor:
    if isinstance(fn, torch.distributions.Normal):
        return fn.loc + fn.scale * noise.epsilon
    if _is_normal_mixture(fn):
        components = fn.component_distribution
        logits = fn.mixture_distribution.logits
        gumbel = noise.gumbel
        fresh = torch.distributions.Gumbel(torch.zeros_like(logits),
                                           torch.ones_like(logits)).sample()
        if gumbel is None or gumbel.shape != logits.shape:
            gumbel = fresh  # a different set of components: the old choice says nothing
        else:
            gumbel = torch.where(torch.isnan(gumbel), fresh, gumbel)
        loc, scale = _component(components, (logits + gumbel).argmax(-1))
        return loc + scale * noise.epsilon
    if isinstance(fn, CoordinateMixture):
        base = _predict_coordinates(fn.base, noise)
        new = _predict_coordinates(fn.replacement, noise)
        return torch.where(fn.mask > 0.5, new, base)
    raise _unsupported(fn)


def abduct(fn, value: torch.Tensor) -> Noise:
    """Exogenous noise that makes mechanism ``fn`` produce ``value``.

    Parameters
    ----------
    fn : distribution
        Normal, mixture of Normals or CoordinateMixture, optionally under ``.to_event``.
    value : tensor
        A value of the site (e.g. a posterior sample of a cell's latents).
    """
    return _abduct_coordinates(_unwrap(fn), value)


def predict(fn, noise: Noise) -> torch.Tensor:
    """Value of mechanism ``fn`` driven by exogenous ``noise`` (inverse of :func:`abduct`)."""
    return _predict_coordinates(_unwrap(fn), noise)


class AbductionMessenger(Messenger):
    """Record the exogenous noise of ``sites`` as the program runs with their values fixed.

    Use inside ``poutine.replay`` (or ``condition``) so that each site carries its posterior
    value; after the run, ``self.noise[name]`` holds a :class:`Noise`.
    """

    def __init__(self, sites):
        super().__init__()
        self.sites = set(sites)
        self.noise: dict[str, Noise] = {}

    def _postprocess_message(self, msg) -> None:
        if msg["type"] == "sample" and msg["name"] in self.sites:
            self.noise[msg["name"]] = abduct(msg["fn"], msg["value"])


class NoiseReplayMessenger(Messenger):
    """Set each site named in ``noise`` to its mechanism's value under that noise."""

    def __init__(self, noise: dict[str, Noise]):
        super().__init__()
        self.noise = noise

    def _pyro_sample(self, msg) -> None:
        if msg["name"] in self.noise and not msg["is_observed"]:
            msg["value"] = predict(msg["fn"], self.noise[msg["name"]])
            msg["done"] = True
