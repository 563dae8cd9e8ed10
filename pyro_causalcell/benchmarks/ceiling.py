"""How well a simulation's latents can be read from its counts at all: a supervised ceiling.

An unsupervised model recovers the true latents up to what the counts say about them. A
network trained *with* the true latents as labels (on log-normalised counts) and scored on
cells it never saw shows that limit: if it reaches a correlation of 0.89, no encoder can be
expected to give an MCC of 0.9 on that design, whatever the model. The estimate is a lower
bound on the best achievable correlation (a larger network or more cells might read a little
more), so a design whose ceiling is near a target says the target is out of reach there, not
that the model falls short.
"""

from __future__ import annotations

import numpy as np
import scipy.sparse
import torch

from ..nn import MLP

__all__ = ["supervised_ceiling"]


def supervised_ceiling(counts, z_true, *, n_hidden: int = 256, epochs: int = 100,
                       batch_size: int = 256, lr: float = 1e-3, seed: int = 0) -> np.ndarray:
    """Per-latent correlation of a supervised network's predictions on held-out cells.

    Cells are split 70 / 15 / 15 % (training / validation / test) at random; an MLP (two
    hidden layers of ``n_hidden``, ReLU) maps standardised ``log1p(counts / total * 1e4)`` to
    the standardised latents with a squared loss; the epoch with the best mean validation
    correlation (checked every 5 epochs) is scored on the test cells. The global torch
    generator is left as it was.

    Parameters
    ----------
    counts : (cells, genes) array or scipy sparse matrix
    z_true : (cells, K) array
    n_hidden, epochs, batch_size, lr : network and training settings
    seed : int

    Returns
    -------
    (K,) array
        Pearson correlation of each latent with its prediction on the test cells.
    """
    counts = counts.toarray() if scipy.sparse.issparse(counts) else np.asarray(counts)
    z_true = np.asarray(z_true, dtype=np.float64)
    if counts.ndim != 2 or z_true.ndim != 2 or len(counts) != len(z_true):
        raise ValueError(f"counts {counts.shape} and z_true {z_true.shape} must be (cells, genes) "
                         "and (cells, K) with the same cells")
    if len(counts) < 20:
        raise ValueError(f"supervised_ceiling needs at least 20 cells, got {len(counts)}")
    total = np.maximum(counts.sum(1, keepdims=True), 1.0)
    x = np.log1p(counts / total * 1e4)
    order = np.random.default_rng([seed, 7]).permutation(len(x))
    train, valid, test = np.split(order, [int(0.7 * len(x)), int(0.85 * len(x))])
    x = (x - x[train].mean(0)) / (x[train].std(0) + 1e-6)
    z = (z_true - z_true[train].mean(0)) / z_true[train].std(0)
    x, z = (torch.as_tensor(a, dtype=torch.float32) for a in (x, z))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        net = MLP(x.shape[1], z.shape[1], [n_hidden, n_hidden])
        optimizer = torch.optim.Adam(net.parameters(), lr=lr)
        best, best_valid = None, -np.inf
        for epoch in range(epochs):
            for index in torch.as_tensor(train)[torch.randperm(len(train))].split(batch_size):
                loss = (net(x[index]) - z[index]).pow(2).mean()
                optimizer.zero_grad()
                loss.backward()
                optimizer.step()
            if epoch % 5 == 4 or epoch == epochs - 1:
                with torch.no_grad():
                    score = _correlations(net(x[valid]), z[valid]).mean()
                    if score > best_valid:
                        best_valid, best = score, _correlations(net(x[test]), z[test])
    return best


def _correlations(predicted: torch.Tensor, target: torch.Tensor) -> np.ndarray:
    """Pearson correlation of each column of ``predicted`` with the same column of ``target``."""
    p = predicted - predicted.mean(0)
    t = target - target.mean(0)
    r = (p * t).sum(0) / (p.norm(dim=0) * t.norm(dim=0)).clamp(min=1e-12)
    return r.double().numpy()
