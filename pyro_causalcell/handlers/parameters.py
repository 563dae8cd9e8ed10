"""Registering a model's networks with Pyro, or not, when the training engine holds them.

``pyro.module(name, module)`` puts each of ``module``'s parameters in Pyro's param store, one
``pyro.param`` call each, every time a model or guide runs: what ``pyro.infer.SVI`` with a
``pyro.optim`` optimiser needs to find them. :func:`~pyro_causalcell.infer.fit` optimises
``model.parameters()`` directly with a torch optimiser, so there the calls are pure cost (about
100 effectful calls per step, some 8% of an sVAE+ step on CPU). Models register through
:func:`register_module`, which the engine's step turns off with :func:`engine_holds_parameters`;
everywhere else (plain SVI, ``Predictive``, a user's own loop) they register as before.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator

import pyro
from torch import nn

__all__ = ["register_module", "engine_holds_parameters"]

_ENGINE_HOLDS = contextvars.ContextVar("engine_holds_parameters", default=False)


def register_module(name: str, module: nn.Module) -> nn.Module:
    """``pyro.module(name, module)``, skipped inside :func:`engine_holds_parameters`."""
    if _ENGINE_HOLDS.get():
        return module
    return pyro.module(name, module)


@contextlib.contextmanager
def engine_holds_parameters() -> Iterator[None]:
    """Inside the block, :func:`register_module` leaves Pyro's param store alone: the caller
    optimises the modules' parameters itself."""
    token = _ENGINE_HOLDS.set(True)
    try:
        yield
    finally:
        _ENGINE_HOLDS.reset(token)
