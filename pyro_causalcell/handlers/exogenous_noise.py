r"""Exogenous noise of latent sites: abduction (value -> noise) and prediction (noise -> value).

A latent :math:`z` with mechanism :math:`p(z \mid \mathrm{pa})` is written as a deterministic
function of its parents and an exogenous noise :math:`u`. For the families used by the models:

- **Normal** ``Normal(loc, scale)``: :math:`z = \mathrm{loc} + \mathrm{scale}\cdot\epsilon`,
  so :math:`\epsilon = (z - \mathrm{loc}) / \mathrm{scale}` (exact abduction);
- **mixture of Normals** (``MixtureSameFamily`` or
  :class:`~pyro_causalcell.distributions.ShiftMixture`, e.g. a perturbation that hits a latent in
  some cells): the component is chosen by the Gumbel-max rule
  :math:`c = \arg\max_i (\ell_i + g_i)` with :math:`g_i \sim \mathrm{Gumbel}(0, 1)`; abduction
  draws the component from its posterior given :math:`z`, the Gumbels from their posterior
  given that component (Oberst and Sontag, 2019), and :math:`\epsilon` of that component;
  prediction picks :math:`\arg\max_i (\ell'_i + g_i)` under the new weights, so an unchanged
  mechanism gives back the same value;
- :class:`~pyro_causalcell.distributions.CoordinateMixture` (a stochastic intervention on some
  coordinates): each coordinate uses the noise of the family that generates it;
- **MultivariateNormal**: :math:`z = \mathrm{loc} + L\epsilon` with the Cholesky factor
  :math:`L`; **transformed** families: the noise of the base distribution of
  :math:`T^{-1}(z)`.

Other families join through :func:`register_noise_family`, without editing the engine.

:class:`AbductionMessenger` records the noise of named sites while the factual program runs
with their values fixed; :class:`NoiseReplayMessenger` sets those sites from the recorded noise
in another (e.g. intervened) run of the program.
"""

from __future__ import annotations

from dataclasses import dataclass

import pyro.distributions as dist
import torch
from pyro.poutine.messenger import Messenger

from ..distributions import CoordinateMixture, ShiftMixture


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
    mechanism : tensor or None
        The mechanism's parameters at abduction, for families whose noise is only defined
        while the mechanism is unchanged (the non-factorized prior keeps a cell's value then).
    """

    epsilon: torch.Tensor
    gumbel: torch.Tensor | None = None
    mechanism: torch.Tensor | None = None


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
    """A ``MixtureSameFamily`` of Normals, or a law that offers one (``ShiftMixture``)."""
    return (isinstance(fn, (torch.distributions.MixtureSameFamily, ShiftMixture))
            and isinstance(fn.component_distribution, torch.distributions.Normal))


def _posterior_gumbels(logits: torch.Tensor, component: torch.Tensor) -> torch.Tensor:
    """Gumbel noise ``g`` with ``argmax(logits + g) == component`` (top-down sampling)."""
    gumbel = torch.distributions.Gumbel(torch.zeros_like(logits), torch.ones_like(logits))
    top = torch.logsumexp(logits, -1, keepdim=True) + gumbel.sample()[..., :1]
    others = logits + gumbel.sample()
    truncated = -torch.log(torch.exp(-top) + torch.exp(-others))  # each below the maximum
    chosen = torch.nn.functional.one_hot(component, logits.shape[-1]).bool()
    perturbed = torch.where(chosen, top.expand_as(logits), truncated)
    return perturbed - logits


def _abduct_normal(fn, value: torch.Tensor) -> Noise:
    return Noise((value - fn.loc) / fn.scale)


def _predict_normal(fn, noise: Noise) -> torch.Tensor:
    return fn.loc + fn.scale * noise.epsilon


def _abduct_normal_mixture(fn, value: torch.Tensor) -> Noise:
    components = fn.component_distribution
    logits = fn.mixture_distribution.logits
    joint = logits + components.log_prob(value.unsqueeze(-1))
    component = torch.distributions.Categorical(logits=joint).sample()
    loc, scale = _component(components, component)
    return Noise((value - loc) / scale, _posterior_gumbels(logits, component))


def _predict_normal_mixture(fn, noise: Noise) -> torch.Tensor:
    components = fn.component_distribution
    logits = fn.mixture_distribution.logits
    gumbel = noise.gumbel
    fresh = torch.distributions.Gumbel(torch.zeros_like(logits), torch.ones_like(logits)).sample()
    if gumbel is None or gumbel.shape != logits.shape:
        gumbel = fresh  # a different set of components: the old choice says nothing
    else:
        gumbel = torch.where(torch.isnan(gumbel), fresh, gumbel)
    loc, scale = _component(components, (logits + gumbel).argmax(-1))
    return loc + scale * noise.epsilon


def _abduct_coordinate_mixture(fn, value: torch.Tensor) -> Noise:
    base = abduct(fn.base, value)
    new = abduct(fn.replacement, value)
    hit = fn.mask > 0.5
    gumbel = new.gumbel
    if gumbel is not None:  # coordinates from the base mechanism revealed no component
        gumbel = torch.where(hit.unsqueeze(-1), gumbel, torch.full_like(gumbel, float("nan")))
    return Noise(torch.where(hit, new.epsilon, base.epsilon), gumbel)


def _predict_coordinate_mixture(fn, noise: Noise) -> torch.Tensor:
    base = predict(fn.base, noise)
    new = predict(fn.replacement, noise)
    return torch.where(fn.mask > 0.5, new, base)


def _abduct_multivariate_normal(fn, value: torch.Tensor) -> Noise:
    centred = (value - fn.loc).unsqueeze(-1)
    tril = fn.scale_tril.expand(centred.shape[:-2] + fn.scale_tril.shape[-2:])
    return Noise(torch.linalg.solve_triangular(tril, centred, upper=False).squeeze(-1))


def _predict_multivariate_normal(fn, noise: Noise) -> torch.Tensor:
    return fn.loc + (fn.scale_tril @ noise.epsilon.unsqueeze(-1)).squeeze(-1)


def _abduct_transformed(fn, value: torch.Tensor) -> Noise:
    for transform in reversed(fn.transforms):
        value = transform.inv(value)
    return abduct(fn.base_dist, value)


def _predict_transformed(fn, noise: Noise) -> torch.Tensor:
    value = predict(fn.base_dist, noise)
    for transform in fn.transforms:
        value = transform(value)
    return value


#: (match, abduct, predict): ``match`` is a distribution type or a predicate on a distribution
_FAMILIES: list[tuple] = []


def register_noise_family(match, abduct_fn, predict_fn) -> None:
    """Teach abduction and prediction a new mechanism family, without editing the engine.

    Parameters
    ----------
    match : type or callable
        A distribution class (instances and subclasses match) or ``match(fn) -> bool``.
    abduct_fn : callable, ``abduct_fn(fn, value) -> Noise``
        The exogenous noise that makes ``fn`` produce ``value``.
    predict_fn : callable, ``predict_fn(fn, noise) -> tensor``
        Its inverse: the value ``fn`` produces from ``noise``.

    Families registered later are tried first, so a registration can refine a built-in one.

    Examples
    --------
    >>> register_noise_family(
    ...     dist.Laplace,
    ...     lambda fn, z: Noise((z - fn.loc) / fn.scale),
    ...     lambda fn, noise: fn.loc + fn.scale * noise.epsilon)
    """
    _FAMILIES.append((match, abduct_fn, predict_fn))


def _family(fn):
    for match, abduct_fn, predict_fn in reversed(_FAMILIES):
        if isinstance(match, type) and isinstance(fn, match) or (
                not isinstance(match, type) and match(fn)):
            return abduct_fn, predict_fn
    raise NotImplementedError(
        f"exogenous noise of a {type(fn).__name__} site is not supported; counterfactuals need "
        "per-cell latents whose mechanism has a noise form (Normal, MultivariateNormal, "
        "mixtures of Normals, CoordinateMixture, transforms of these). Register yours with "
        "pyro_causalcell.handlers.register_noise_family(...).")


register_noise_family(torch.distributions.Normal, _abduct_normal, _predict_normal)
register_noise_family(_is_normal_mixture, _abduct_normal_mixture, _predict_normal_mixture)
register_noise_family(CoordinateMixture, _abduct_coordinate_mixture, _predict_coordinate_mixture)
register_noise_family(torch.distributions.MultivariateNormal, _abduct_multivariate_normal,
                      _predict_multivariate_normal)
register_noise_family(torch.distributions.TransformedDistribution, _abduct_transformed,
                      _predict_transformed)


def abduct(fn, value: torch.Tensor) -> Noise:
    """Exogenous noise that makes mechanism ``fn`` produce ``value``.

    Parameters
    ----------
    fn : distribution
        A registered family (Normal, MultivariateNormal, mixture of Normals, CoordinateMixture,
        a TransformedDistribution of these, or one added with :func:`register_noise_family`),
        optionally under ``.to_event``.
    value : tensor
        A value of the site (e.g. a posterior sample of a cell's latents).
    """
    fn = _unwrap(fn)
    return _family(fn)[0](fn, value)


def predict(fn, noise: Noise) -> torch.Tensor:
    """Value of mechanism ``fn`` driven by exogenous ``noise`` (inverse of :func:`abduct`)."""
    fn = _unwrap(fn)
    return _family(fn)[1](fn, noise)


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
