"""Multilayer perceptron with covariates injected into every layer."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .dropout import PackedDropout


class MinibatchNorm(nn.BatchNorm1d):
    """``BatchNorm1d`` that uses its running statistics for a batch of one cell.

    Training statistics of a single row are undefined; a last minibatch of one cell (or a
    single-cell query) then uses the running estimates instead of failing.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.training and x.shape[0] == 1:
            return nn.functional.batch_norm(x, self.running_mean, self.running_var, self.weight,
                                            self.bias, False, 0.0, self.eps)
        return super().forward(x)


class MLP(nn.Module):
    """Fully connected network ``x -> hidden layers -> out``.

    Covariates (e.g. one-hot domains) are concatenated to the input of every layer, so they
    can act at every depth rather than only at the first.

    Parameters
    ----------
    n_input, n_output : int
    hidden : sequence of int
        Hidden layer widths (empty: one linear map).
    n_covariates : int
        Width of the covariate vector passed to :meth:`forward` (0: none).
    activation : type of nn.Module
        Nonlinearity after each hidden layer.
    dropout : float
        Dropout rate after each hidden activation (:class:`PackedDropout`).
    norm : {None, "layer", "batch"}
        Normalise each hidden layer's pre-activation (``nn.LayerNorm`` or ``nn.BatchNorm1d``).
        Layer norm treats every cell on its own (no train / eval difference); batch norm
        makes a cell's output depend on its minibatch during training.
    """

    NORMS = (None, "layer", "batch")

    def __init__(self, n_input: int, n_output: int, hidden: Sequence[int] = (128,), *,
                 n_covariates: int = 0, activation: type[nn.Module] = nn.ReLU,
                 dropout: float = 0.0, norm: str | None = None):
        super().__init__()
        if norm not in self.NORMS:
            raise ValueError(f"norm={norm!r}; choose one of {self.NORMS}")
        widths = [n_input, *hidden, n_output]
        self.n_covariates = n_covariates
        self.layers = nn.ModuleList(
            nn.Linear(w_in + n_covariates, w_out) for w_in, w_out in zip(widths[:-1], widths[1:])
        )
        make_norm = {None: lambda w: nn.Identity(), "layer": nn.LayerNorm,
                     "batch": lambda w: MinibatchNorm(w, momentum=0.01, eps=1e-3)}[norm]
        self.norms = nn.ModuleList(make_norm(w) for w in hidden)
        self.activation = activation()
        self.dropout = PackedDropout(dropout) if dropout > 0 else nn.Identity()

    def forward(self, x: torch.Tensor, covariates: torch.Tensor | None = None) -> torch.Tensor:
        """Map ``(batch, n_input)`` (and ``(batch, n_covariates)``) to ``(batch, n_output)``."""
        last = len(self.layers) - 1
        for i, layer in enumerate(self.layers):
            if self.n_covariates:
                x = torch.cat([x, covariates], dim=-1)
            x = layer(x)
            if i < last:
                x = self.dropout(self.activation(self.norms[i](x)))
        return x
