"""Predictors of a covariate from a model's latents: inVAE's invariant predictor.

A classifier (linear, or a small MLP) on the posterior means of one latent site, trained with
cross-entropy on cells whose category is known and applied to new cells, whose category need
not be known. On inVAE's invariant latents it is the predictor that should stay right when the
association between biology and batch changes.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch
from torch import nn

from .. import sites
from ..data import CellData
from ..nn import MLP
from .latent import latent
from .protocol import seeded

__all__ = ["LatentClassifier", "train_classifier"]

KINDS = ("linear", "mlp")


def train_classifier(x: torch.Tensor, y: torch.Tensor, n_classes: int, *, kind: str = "linear",
                     n_hidden: int = 64, max_epochs: int = 300, lr: float = 1e-2,
                     weight_decay: float = 1e-4, seed: int = 0) -> nn.Module:
    """A classifier of ``(n, d)`` features ``x`` into ``y`` (``(n,)`` long codes), trained with
    full-batch Adam on cross-entropy; returned in eval mode, mapping features to logits."""
    if kind not in KINDS:
        raise ValueError(f"kind={kind!r}; choose one of {KINDS}")
    with seeded(seed):
        hidden = () if kind == "linear" else (n_hidden,)
        network = MLP(x.shape[1], n_classes, hidden)
        optimizer = torch.optim.Adam(network.parameters(), lr=lr, weight_decay=weight_decay)
        for _ in range(max_epochs):
            optimizer.zero_grad()
            loss = nn.functional.cross_entropy(network(x), y)
            loss.backward()
            optimizer.step()
    return network.eval()


class LatentClassifier:
    """Classify ``target`` (``"label"``, ``"domain"`` or a named categorical covariate) from the
    latents ``site`` of a fitted model.

    Parameters
    ----------
    model : nn.Module following the model protocol
    target : str
    site : str, optional
        Latent site (default: the model's default, ``"z_inv"`` for InVAE).
    kind : {"linear", "mlp"}
    n_hidden : int
        Width of the MLP's hidden layer.
    max_epochs : int
        Full-batch Adam steps.
    lr, weight_decay : float
    seed : int

    Examples
    --------
    >>> predictor = LatentClassifier(invae, "label").fit(train)     # doctest: +SKIP
    >>> predictor.predict(test)          # category names, test's labels not needed
    """

    def __init__(self, model, target: str = sites.LABEL, site: str | None = None, *,
                 kind: str = "linear", n_hidden: int = 64, max_epochs: int = 300,
                 lr: float = 1e-2, weight_decay: float = 1e-4, seed: int = 0):
        if kind not in KINDS:
            raise ValueError(f"kind={kind!r}; choose one of {KINDS}")
        self.model, self.target, self.site, self.kind = model, target, site, kind
        self.n_hidden, self.max_epochs, self.lr = n_hidden, max_epochs, lr
        self.weight_decay, self.seed = weight_decay, seed
        self.classes: tuple[str, ...] = ()
        self.network: nn.Module | None = None

    def _targets(self, data: CellData) -> torch.Tensor:
        values = data.covariate_values(self.target)
        if values is None or not data.schema.categories_of(self.target):
            raise ValueError(f"the data carries no {self.target!r} to learn from; encode it "
                             f"with CellData.from_anndata(..., {self.target}_key=...)")
        return values.cpu()

    def _features(self, data: CellData) -> torch.Tensor:
        return torch.as_tensor(latent(self.model, data, site=self.site), dtype=torch.float32)

    def fit(self, data: CellData) -> "LatentClassifier":
        """Train on the cells of ``data`` (their ``target`` must be known); returns self."""
        y = self._targets(data)
        self.classes = data.schema.categories_of(self.target)
        self.network = train_classifier(
            self._features(data), y, len(self.classes), kind=self.kind, n_hidden=self.n_hidden,
            max_epochs=self.max_epochs, lr=self.lr, weight_decay=self.weight_decay,
            seed=self.seed)
        return self

    def predict_proba(self, data: CellData) -> pd.DataFrame:
        """``(n_cells, n_classes)`` class probabilities, columns named by category."""
        if self.network is None:
            raise RuntimeError("call fit(data) before predicting")
        with torch.no_grad():
            probabilities = torch.softmax(self.network(self._features(data)), -1).numpy()
        return pd.DataFrame(probabilities, index=data.obs_names, columns=list(self.classes))

    def predict(self, data: CellData) -> np.ndarray:
        """The most probable category name of each cell."""
        return self.predict_proba(data).idxmax(axis=1).to_numpy()

    def score(self, data: CellData) -> float:
        """Accuracy on cells whose ``target`` is known."""
        truth = np.asarray(self.classes)[self._targets(data).numpy()]
        return float(np.mean(self.predict(data) == truth))
