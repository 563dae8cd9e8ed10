r"""Training steps: what :func:`~pyro_causalcell.infer.fit` does with one minibatch.

The default step minimises the negative ELBO with one Adam over the model's parameters. Families
whose objective goes beyond the ELBO use the same step with two additions:

- **penalties**: ``pyro.factor`` sites in the model (an independence penalty, a classifier's
  loss). Each is weighted by name, with a weight that may follow a schedule over epochs
  (``penalty_weights={"hsic": warmup(20, 10.0)}``), and is recorded apart, so the history
  reports the ELBO itself and each penalty beside it;
- **adversaries** (:class:`Adversary`): networks with their own loss and their own optimiser,
  updated ``steps`` times after each ELBO step. Their parameters are left out of the ELBO's
  optimiser; the model reaches them only through a penalty (e.g. a term that rewards fooling
  them), whose gradient flows into the encoder as the objective says.

A two-stage fit (fit some parameters, freeze them, fit others, as LORD's amortised encoders
after its latent optimisation) is two calls of ``fit(..., parameters=...)``.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

import pyro
import torch
from pyro.infer import ELBO
from torch import nn

from ..data import CellBatch
from ..handlers import PenaltyMessenger, engine_holds_parameters, scale_latents
from .distributed import SingleProcess

__all__ = ["Adversary", "TrainingStep", "StepResult", "warmup", "make_adam",
           "only_training"]

#: a penalty weight: a number, or a function of the epoch (0-based)
Weight = float | Callable[[int], float]


def warmup(epochs: int, final: float = 1.0, start: float = 0.0) -> Callable[[int], float]:
    """A weight rising linearly from ``start`` to ``final`` over ``epochs`` epochs (like the
    KL warm-up), then held at ``final``."""
    if epochs < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")

    def weight(epoch: int) -> float:
        if epochs == 0:
            return final
        return start + (final - start) * min(1.0, (epoch + 1) / epochs)

    return weight


def make_adam(parameters, lr: float, weight_decay: float = 0.0,
              eps: float = 0.01) -> torch.optim.Adam:
    """Adam with the fused (single-kernel) update where the device supports it."""
    parameters = list(parameters)
    options = dict(lr=lr, weight_decay=weight_decay, eps=eps)
    try:
        return torch.optim.Adam(parameters, fused=True, **options)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(parameters, foreach=True, **options)


@contextlib.contextmanager
def only_training(model: nn.Module, parameters: Iterable[nn.Parameter] | None) -> Iterator[None]:
    """Inside the block only ``parameters`` require gradients (``None``: all, unchanged)."""
    if parameters is None:
        yield
        return
    keep = {id(p) for p in parameters}
    before = {id(p): p.requires_grad for p in model.parameters()}
    for parameter in model.parameters():
        parameter.requires_grad_(id(parameter) in keep)
    try:
        yield
    finally:
        for parameter in model.parameters():
            parameter.requires_grad_(before[id(parameter)])


@dataclass
class Adversary:
    """A network trained on its own loss with its own optimiser, beside the ELBO.

    Parameters
    ----------
    name : str
        Its column in the history (``adversary_<name>``).
    module : nn.Module
        Its parameters, left out of the ELBO's optimiser.
    loss : callable, ``loss(batch) -> scalar tensor``
        What the adversary minimises; typically computed from latents drawn from the guide
        (detached, so the adversary's update leaves the encoder alone).
    steps : int
        Updates per ELBO step (``k`` in "k discriminator steps per generator step").
    lr : float
    eps : float, optional
        Adam's epsilon (default: the ELBO optimiser's ``adam_eps``, whose 0.01 damps the small
        gradients of a classifier's loss: a discriminator wants ``1e-8``).
    start_epoch : int
        First epoch in which it trains.
    every : int
        Train in every ``every``-th epoch from ``start_epoch`` (2: alternating epochs).
    """

    name: str
    module: nn.Module
    loss: Callable[[CellBatch], torch.Tensor]
    steps: int = 1
    lr: float = 1e-3
    eps: float | None = None
    start_epoch: int = 0
    every: int = 1

    def trains_in(self, epoch: int) -> bool:
        return epoch >= self.start_epoch and (epoch - self.start_epoch) % self.every == 0


@dataclass
class StepResult:
    """What one step measured (per minibatch, scaled to the whole training set)."""

    loss: float
    """The negative objective that was minimised (ELBO and weighted penalties)."""
    penalties: dict[str, torch.Tensor] = field(default_factory=dict)
    """Each factor's contribution to the log joint (negative for a penalty), detached."""
    adversaries: dict[str, torch.Tensor] = field(default_factory=dict)
    """Each adversary's last loss in this step, detached (read once per epoch)."""

    @property
    def elbo(self) -> float:
        """The ELBO alone: the objective without the penalties."""
        return -self.loss - float(sum(v.item() for v in self.penalties.values()))


class TrainingStep:
    """The ELBO step with penalties and adversaries; one per :func:`fit` call.

    Parameters
    ----------
    model : nn.Module following the model protocol
    elbo : pyro.infer.ELBO
    lr, weight_decay, adam_eps : float
        The ELBO optimiser's settings.
    parameters : iterable of nn.Parameter, optional
        Train only these (default: every parameter of the model outside the adversaries).
    adversaries : iterable of Adversary
    penalty_weights : dict of str -> float or callable(epoch)
        Weight of each named ``pyro.factor`` site.
    parallel : SingleProcess or DataParallel, optional
        Across processes (:mod:`~pyro_causalcell.infer.distributed`), the objective runs under
        DistributedDataParallel and the adversaries' gradients are averaged.
    """

    def __init__(self, model, *, elbo: ELBO, lr: float, weight_decay: float = 0.0,
                 adam_eps: float = 0.01, parameters: Iterable[nn.Parameter] | None = None,
                 adversaries: Iterable[Adversary] = (),
                 penalty_weights: dict[str, Weight] | None = None, parallel=None):
        self.model, self.elbo = model, elbo
        self.parallel = parallel or SingleProcess()
        self.objective = self.parallel.wrap(_Objective(model, elbo))
        self.adversaries = list(adversaries)
        names = [a.name for a in self.adversaries]
        if len(set(names)) != len(names):
            raise ValueError(f"adversary names must be distinct, got {names}")
        excluded = {id(p) for a in self.adversaries for p in a.module.parameters()}
        chosen = model.parameters() if parameters is None else parameters
        self.parameters = [p for p in chosen if id(p) not in excluded]
        if not self.parameters:
            raise ValueError("no parameters to train: the model has none outside its "
                             "adversaries, or parameters=[] was given")
        self.optimizer = make_adam(self.parameters, lr, weight_decay, adam_eps)
        self.adversary_optimizers = {a.name: make_adam(a.module.parameters(), a.lr,
                                                       eps=adam_eps if a.eps is None else a.eps)
                                     for a in self.adversaries}
        self.penalty_weights = dict(penalty_weights or {})
        self.penalties = PenaltyMessenger()
        self._record = True  # until the first step shows the model has no penalty
        self.epoch = 0
        self._model_fn, self._guide_fn = model.model, model.guide

    def start_epoch(self, epoch: int, kl_weight: float) -> dict[str, float]:
        """Set this epoch's KL and penalty weights; returns the penalty weights."""
        self.epoch = epoch
        weights = {name: float(w(epoch) if callable(w) else w)
                   for name, w in self.penalty_weights.items()}
        self.penalties.weights = weights
        self._model_fn = _weighted(self.model.model, kl_weight)
        self._guide_fn = _weighted(self.model.guide, kl_weight)
        return weights

    def __call__(self, batch: CellBatch, validate: bool = False) -> StepResult:
        """One update of the ELBO's parameters, then of each adversary training this epoch.

        The loss is checked by the caller before anything is stepped: a non-finite value
        leaves every parameter as it was.
        """
        model_fn = self.penalties(self._model_fn) if self._record else self._model_fn
        # the optimiser holds the parameters: no need to put them in Pyro's param store
        with pyro.validation_enabled(validate), engine_holds_parameters():
            loss = self.objective(batch, model_fn, self._guide_fn)
        value = loss.item()
        result = StepResult(value, dict(self.penalties.values) if self._record else {})
        if self._record and not result.penalties and not self.penalty_weights:
            self._record = False  # nothing to weigh or record: skip the messenger from now on
        if value != value or value in (float("inf"), float("-inf")):
            return result
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        for adversary in self.adversaries:
            if not adversary.trains_in(self.epoch):
                continue
            optimizer = self.adversary_optimizers[adversary.name]
            for _ in range(adversary.steps):
                # as the ELBO: checks on step one only, no param-store registration
                with pyro.validation_enabled(validate), engine_holds_parameters():
                    adversary_loss = adversary.loss(batch)
                optimizer.zero_grad(set_to_none=True)
                adversary_loss.backward()
                self.parallel.average_gradients(adversary.module.parameters())
                optimizer.step()
            result.adversaries[adversary.name] = adversary_loss.detach()
        return result

    def state_dict(self) -> dict:
        """Optimiser states and the adversaries' parameters (restored after a divergence)."""
        return {"optimizer": self.optimizer.state_dict(),
                "adversaries": {a.name: (a.module.state_dict(),
                                         self.adversary_optimizers[a.name].state_dict())
                                for a in self.adversaries}}

    def load_state_dict(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])
        for adversary in self.adversaries:
            module_state, optimizer_state = state["adversaries"][adversary.name]
            adversary.module.load_state_dict(module_state)
            self.adversary_optimizers[adversary.name].load_state_dict(optimizer_state)


class _Objective(nn.Module):
    """The negative ELBO as a module's ``forward``, the form DistributedDataParallel wraps."""

    def __init__(self, model: nn.Module, elbo: ELBO):
        super().__init__()
        self.model, self.elbo = model, elbo

    def forward(self, batch: CellBatch, model_fn, guide_fn) -> torch.Tensor:
        return self.elbo.differentiable_loss(model_fn, guide_fn, batch)


def _weighted(fn, weight: float):
    return fn if weight == 1.0 else scale_latents(fn, weight=weight)
