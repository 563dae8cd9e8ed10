r"""Penalties: ``pyro.factor`` sites weighted by name and recorded apart from the ELBO.

Families add objectives beyond the ELBO (an independence penalty, a classifier's loss, an
adversary's loss to fool) as ``pyro.factor`` sites; :class:`PenaltyMessenger` lets the training
engine give each a weight that can change over epochs (a schedule) and read back what each
contributed, so the history reports the ELBO itself and every penalty beside it.
"""

from __future__ import annotations

import torch
from pyro.poutine.messenger import Messenger
from pyro.poutine.util import site_is_factor


class PenaltyMessenger(Messenger):
    r"""Scale named ``pyro.factor`` sites and record each factor's total contribution.

    Parameters
    ----------
    weights : dict of str -> float, optional
        Multiplier of each named factor site (others keep weight 1).

    Attributes
    ----------
    values : dict of str -> scalar tensor
        After a run: :math:`\sum` (scale x log factor) of each factor site, i.e. what it added to
        the model's log joint (a penalty is negative); detached.
    """

    def __init__(self, weights: dict[str, float] | None = None):
        super().__init__()
        self.weights = dict(weights or {})
        self.values: dict[str, torch.Tensor] = {}

    def __enter__(self):
        self.values = {}
        return super().__enter__()

    def _process_message(self, msg):
        if site_is_factor(msg) and msg["name"] in self.weights:
            msg["scale"] = self.weights[msg["name"]] * msg["scale"]

    def _postprocess_message(self, msg):
        if not site_is_factor(msg):
            return
        log_factor = msg["fn"].log_prob(msg["value"])
        mask = msg["mask"]
        if mask is not None and mask is not True:
            log_factor = torch.where(torch.as_tensor(mask), log_factor, log_factor.new_zeros(()))
        self.values[msg["name"]] = (log_factor * msg["scale"]).sum().detach()


def block_penalties(fn):
    """``fn`` with every ``pyro.factor`` site hidden from outer handlers (an ELBO without them)."""
    from pyro import poutine

    return poutine.block(fn, hide_fn=site_is_factor)
