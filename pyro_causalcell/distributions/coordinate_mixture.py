"""Coordinates drawn from one distribution where a mask is 1 and from another where it is 0:
the mechanism of a latent under a soft intervention on some of its coordinates."""

from __future__ import annotations

import torch
from pyro.distributions import TorchDistribution, constraints


class CoordinateMixture(TorchDistribution):
    """Coordinates drawn from ``replacement`` where ``mask`` is 1 and from ``base`` where it is 0.

    Parameters
    ----------
    base, replacement : TorchDistribution
        Coordinate-wise distributions (before ``.to_event``) of the same shape.
    mask : tensor in [0, 1]
        Broadcastable to the coordinates; fractional values interpolate the log-densities.
    event_dim : int
        Rightmost dimensions treated as the event.
    """

    arg_constraints = {}

    def __init__(self, base: TorchDistribution, replacement: TorchDistribution,
                 mask: torch.Tensor, event_dim: int = 1, validate_args=None):
        shape = torch.broadcast_shapes(base.batch_shape, replacement.batch_shape, mask.shape)
        self.base, self.replacement = base.expand(shape), replacement.expand(shape)
        self.mask = mask.expand(shape).to(torch.get_default_dtype())
        split = len(shape) - event_dim
        super().__init__(shape[:split], shape[split:], validate_args=validate_args)
        self._event_dim = event_dim

    @property
    def support(self):
        return constraints.independent(self.base.support, self._event_dim)

    @property
    def has_rsample(self) -> bool:
        return self.base.has_rsample and self.replacement.has_rsample

    def _pick(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.where(self.mask > 0.5, b, a)

    def sample(self, sample_shape=torch.Size()):
        return self._pick(self.base.sample(sample_shape), self.replacement.sample(sample_shape))

    def rsample(self, sample_shape=torch.Size()):
        return self._pick(self.base.rsample(sample_shape),
                          self.replacement.rsample(sample_shape))

    def coordinate_log_prob(self, value: torch.Tensor) -> torch.Tensor:
        """Log density of each coordinate (``log_prob`` before summing the event dimensions)."""
        return (self.mask * self.replacement.log_prob(value)
                + (1 - self.mask) * self.base.log_prob(value))

    def log_prob(self, value):
        mixed = self.coordinate_log_prob(value)
        return mixed.sum(list(range(-self._event_dim, 0))) if self._event_dim else mixed

    def expand(self, batch_shape, _instance=None):
        shape = torch.Size(batch_shape) + self.event_shape
        return CoordinateMixture(self.base.expand(shape), self.replacement.expand(shape),
                                 self.mask.expand(shape), self._event_dim)
