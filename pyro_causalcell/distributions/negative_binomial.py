"""Negative binomial count likelihoods parameterised by mean and inverse dispersion.

For mean :math:`\\mu` and inverse dispersion :math:`\\theta` (variance
:math:`\\mu + \\mu^2/\\theta`)

.. math::
    \\log p(x) = \\log\\Gamma(x+\\theta) - \\log\\Gamma(\\theta) - \\log\\Gamma(x+1)
        + \\theta \\log\\theta + x \\log\\mu - (x+\\theta)\\log(\\theta+\\mu).

Decoders produce :math:`\\log\\mu` directly (log-softmax plus log library size), so the
distributions take ``log_mean`` and never evaluate ``log(exp(.))``. The log-density and its
gradient come from :mod:`pyro_causalcell.distributions.nb_log_prob`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from pyro.distributions import TorchDistribution, constraints
from torch.distributions.utils import broadcast_all

from .nb_log_prob import nb_log_prob as _nb_log_prob


class NegativeBinomial(TorchDistribution):
    """Negative binomial with mean and inverse dispersion (a Gamma-Poisson mixture).

    Parameters
    ----------
    mean : tensor, optional
        Mean :math:`\\mu > 0`.
    inverse_dispersion : tensor
        :math:`\\theta > 0`; broadcastable against the mean (e.g. one per gene).
    log_mean : tensor, optional
        :math:`\\log\\mu`, the numerically preferred input. Give ``mean``, ``log_mean`` or
        both (a decoder that already holds both saves one pass over cells x genes).
    """

    arg_constraints = {"log_mean": constraints.real, "inverse_dispersion": constraints.positive}
    support = constraints.nonnegative_integer

    def __init__(self, mean: torch.Tensor | None = None,
                 inverse_dispersion: torch.Tensor | None = None, *,
                 log_mean: torch.Tensor | None = None, validate_args: bool | None = None):
        if mean is None and log_mean is None:
            raise ValueError("NegativeBinomial needs mean= or log_mean=")
        if inverse_dispersion is None:
            raise ValueError("NegativeBinomial needs inverse_dispersion=")
        if log_mean is None:
            log_mean = torch.as_tensor(mean).log()
        self.log_mean = log_mean
        self._mean = mean
        # theta keeps its own shape for the theta-only terms of log_prob
        self.inverse_dispersion = torch.as_tensor(inverse_dispersion, dtype=log_mean.dtype,
                                                  device=log_mean.device)
        batch_shape = torch.broadcast_shapes(log_mean.shape, self.inverse_dispersion.shape)
        super().__init__(batch_shape, validate_args=validate_args)

    @property
    def mean(self) -> torch.Tensor:
        mean = self.log_mean.exp() if self._mean is None else self._mean
        return mean.expand(self.batch_shape)

    @property
    def variance(self) -> torch.Tensor:
        mu = self.mean
        return mu + mu.pow(2) / self.inverse_dispersion

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(NegativeBinomial, _instance)
        batch_shape = torch.Size(batch_shape)
        new.log_mean = self.log_mean.expand(batch_shape)
        new._mean = None if self._mean is None else self._mean.expand(batch_shape)
        new.inverse_dispersion = self.inverse_dispersion
        super(NegativeBinomial, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            theta, log_mean = broadcast_all(self.inverse_dispersion, self.log_mean)
            rate = torch.distributions.Gamma(theta.expand(shape), (theta / log_mean.exp())
                                             .expand(shape)).sample()
            return torch.poisson(rate)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        return _nb_log_prob(value, self.log_mean, self._mean, self.inverse_dispersion).expand(
            torch.broadcast_shapes(value.shape, self.batch_shape))


class ZeroInflatedNegativeBinomial(NegativeBinomial):
    """Negative binomial mixed with a point mass at zero.

    Parameters
    ----------
    mean, inverse_dispersion, log_mean
        As in :class:`NegativeBinomial`.
    gate_logits : tensor
        Logit of the probability of a structural zero.
    """

    arg_constraints = {**NegativeBinomial.arg_constraints, "gate_logits": constraints.real}

    def __init__(self, mean=None, inverse_dispersion=None, *, gate_logits: torch.Tensor,
                 log_mean=None, validate_args=None):
        self.gate_logits = gate_logits
        super().__init__(mean, inverse_dispersion, log_mean=log_mean, validate_args=validate_args)
        self._batch_shape = torch.broadcast_shapes(self.batch_shape, gate_logits.shape)

    @property
    def mean(self) -> torch.Tensor:
        return torch.sigmoid(-self.gate_logits) * super().mean

    @property
    def variance(self) -> torch.Tensor:
        keep = torch.sigmoid(-self.gate_logits)
        mu = super().mean
        return keep * (mu + mu.pow(2) / self.inverse_dispersion) + keep * (1 - keep) * mu.pow(2)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(ZeroInflatedNegativeBinomial, _instance)
        new.gate_logits = self.gate_logits.expand(batch_shape)
        return super().expand(batch_shape, _instance=new)

    def sample(self, sample_shape=torch.Size()) -> torch.Tensor:
        counts = super().sample(sample_shape)
        with torch.no_grad():
            zero = torch.bernoulli(torch.sigmoid(self.gate_logits).expand(counts.shape))
        return counts * (1 - zero)

    def log_prob(self, value: torch.Tensor) -> torch.Tensor:
        if self._validate_args:
            self._validate_sample(value)
        nb = _nb_log_prob(value, self.log_mean, self._mean, self.inverse_dispersion)
        log_gate = -F.softplus(-self.gate_logits)
        log_keep = -F.softplus(self.gate_logits)
        zero_case = torch.logaddexp(log_gate, log_keep + nb)
        return torch.where(value == 0, zero_case, log_keep + nb)
