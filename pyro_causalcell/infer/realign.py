r"""Realignment of a sparse-shift model's latents: a cheap search over linear maps.

A fitted sVAE / sVAE+ recovers the true latents up to a smooth map, but minibatch SVI turns
that map towards the axes the sparse targets single out only slowly: on small designs fits
end with latents that are close to a *linear* mixture of the true ones (a linear regression
recovers them with :math:`R^2 \approx 0.9`) while each learned latent matches a true one
poorly. The perturbation prior is what tells the mixtures apart, and it can be searched
directly, without the networks: :func:`realign_latents` finds the linear map :math:`A` of the
(standardised) posterior means under which the perturbation prior explains them best,

.. math::

    \max_{A, \delta, \pi} \; \sum_i \log p(A \bar z_i \mid a_i; \delta, \pi)
    + n \log |\det A| + \log p(\delta) + \log p(\pi),

(the change-of-variables term keeps :math:`A` from shrinking the latents), from several
starts (the identity, so the current alignment competes, and random rotations), and keeps the
best. A start costs seconds, where a restart of the fit costs a whole fit.
The map is then absorbed into the encoder's location and the decoder's input layer
(:meth:`~pyro_causalcell.models.VAE.transform_latents`, which decodes every cell as before)
and the shift tables start from the search's values; a further fit
(:func:`fit_with_realignment`) polishes the result under the full ELBO.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..data import CellData
from .fit import fit
from .history import TrainingHistory
from .latent import latent
from .steps import make_adam

__all__ = ["Realignment", "search_alignment", "realign_latents", "fit_with_realignment"]


@dataclass
class Realignment:
    """The best linear map found by :func:`search_alignment`.

    Attributes
    ----------
    matrix : (K, K) tensor
        The aligned latents are ``matrix @ (z - offset)``.
    offset : (K,) tensor
    shift, target_logit : (P, K) tensors
        The perturbation prior's tables at the optimum (the logit of :math:`\\pi`).
    scores : list of float
        Per start, the objective per cell (higher is better); start 0 is the identity.
    kept : int
        The start whose map is kept.
    """

    matrix: torch.Tensor
    offset: torch.Tensor
    shift: torch.Tensor
    target_logit: torch.Tensor
    scores: list[float]
    kept: int

    def apply(self, z: torch.Tensor) -> torch.Tensor:
        """The aligned latents of ``(cells, K)`` latents ``z``."""
        return (z - self.offset) @ self.matrix.t()


def search_alignment(z: torch.Tensor, perturbation: torch.Tensor, prior, *, n_starts: int = 10,
                     steps: int = 1000, lr: float = 0.1, seed: int = 0) -> Realignment:
    """The linear map of latents ``z`` under which ``prior`` explains them best.

    Parameters
    ----------
    z : (cells, K) tensor
        Latents (e.g. posterior means); standardised before the search.
    perturbation : (cells, P) multi-hot tensor
    prior : SparseShifts
        The perturbation prior (its ``log_joint``), e.g. ``model.shifts``.
    n_starts : int
        Starts of the search: the identity, then random rotations.
    steps : int
        Full-batch Adam steps per start.
    lr : float
    seed : int
        Seeds the random rotations.

    Returns
    -------
    Realignment
    """
    if n_starts < 1 or steps < 1:
        raise ValueError(f"n_starts and steps must be >= 1, got {n_starts}, {steps}")
    if z.ndim != 2 or perturbation.ndim != 2 or len(z) != len(perturbation):
        raise ValueError(f"z must be (cells, K) and perturbation (cells, P) with the same "
                         f"cells, got {tuple(z.shape)} and {tuple(perturbation.shape)}")
    generator = torch.Generator().manual_seed(seed)
    z, perturbation = z.detach().float(), perturbation.detach().float()
    offset, scale = z.mean(0), z.std(0).clamp_min(1e-6)
    standard = (z - offset) / scale
    k = standard.shape[1]
    starts = torch.stack([torch.eye(k)] + [
        torch.linalg.qr(torch.randn(k, k, generator=generator))[0] for _ in range(n_starts - 1)])
    scores, matrices, shifts, logits = _search(prior, standard, perturbation, starts, steps, lr)
    kept = int(scores.nan_to_num(nan=-torch.inf).argmax())  # a start that diverged loses
    rotation = matrices[kept]
    return Realignment(rotation / scale, offset, shifts[kept], logits[kept],  # @ diag(1 / scale)
                       scores.tolist(), kept)


def realign_latents(model, data: CellData, *, n_starts: int = 10, steps: int = 1000,
                    lr: float = 0.1, max_cells: int = 5000, seed: int = 0) -> Realignment:
    """Map a fitted sVAE / sVAE+'s latents linearly to where its perturbation prior explains
    them best (see the module docstring); changes ``model`` in place.

    The posterior means of ``data``'s cells (at most ``max_cells``, drawn at random) are
    searched by :func:`search_alignment`; the kept map is absorbed into the networks
    (:meth:`~pyro_causalcell.models.VAE.transform_latents`) and the shift tables take the
    search's values (target logits clipped to [-4, 4], so no target starts out settled). The
    encoder's scale is not transformed; :func:`fit_with_realignment` trains it again. The
    search uses every cell of ``data`` given (a fit's validation cells too: the map has only
    K x K numbers).

    Parameters
    ----------
    model : SparseShiftVAE with sparsity ``"svae"`` or ``"svae+"``
    data : CellData
        Cells with perturbations, encoded with the model's schema (e.g. the training data).
    n_starts, steps, lr
        As for :func:`search_alignment`.
    max_cells : int
    seed : int
        Seeds the cells drawn and the search.

    Returns
    -------
    Realignment
    """
    _require_sparse_prior(model, "realign_latents")
    if data.perturbation is None:
        raise ValueError("realign_latents needs cells with perturbations: build the data with "
                         "CellData.from_anndata(..., perturbation_key=...)")
    if max_cells < 1:
        raise ValueError(f"max_cells must be >= 1, got {max_cells}")
    z = torch.as_tensor(latent(model, data), dtype=torch.float32)
    perturbation = data.perturbation.detach().cpu()
    if len(z) > max_cells:
        cells = torch.randperm(len(z), generator=torch.Generator().manual_seed(seed))
        z, perturbation = z[cells[:max_cells]], perturbation[cells[:max_cells]]
    found = search_alignment(z, perturbation, model.shifts, n_starts=n_starts, steps=steps,
                             lr=lr, seed=seed)
    device = model.shifts.shift_loc.device
    model.transform_latents(found.matrix.to(device), found.offset.to(device))
    with torch.no_grad():
        model.shifts.shift_loc.copy_(found.shift)
        model.shifts.target_logit.copy_(found.target_logit.clamp(-4.0, 4.0))
    return found


def _require_sparse_prior(model, caller: str) -> None:
    if not getattr(model, "has_targets", False):
        raise ValueError(f"{caller} needs a SparseShiftVAE with sparsity 'svae' or 'svae+' (a "
                         "model with a sparse perturbation prior)")


def _search(prior, z: torch.Tensor, perturbation: torch.Tensor, starts: torch.Tensor,
            steps: int, lr: float
            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """All starts ``(S, K, K)`` at once, as one batch of independent problems (Adam's update
    is elementwise): ``(objective per cell (S,), maps, shifts, target logits)``."""
    n = len(z)
    matrix = torch.nn.Parameter(starts.clone())
    with torch.no_grad():
        cells = perturbation.sum(0).clamp_min(1.0)
        mean_shift = (perturbation.t() @ (z @ starts.transpose(-1, -2))) / cells[:, None]
    shift = torch.nn.Parameter(mean_shift)  # (S, P, K)
    logit = torch.nn.Parameter(torch.zeros_like(mean_shift))
    optimizer = make_adam([matrix, shift, logit], lr=lr, eps=1e-8)

    def objective() -> torch.Tensor:
        joint = prior.log_joint(z @ matrix.transpose(-1, -2), perturbation, shift, logit)
        return (joint + n * torch.linalg.slogdet(matrix)[1]) / n

    for _ in range(steps):
        loss = -objective().sum()
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    with torch.no_grad():
        scores = objective()
    return scores, matrix.detach(), shift.detach(), logit.detach()


def fit_with_realignment(model, data: CellData, *, max_epochs: int, realign_after: int,
                         n_starts: int = 10, seed: int = 0, **fit_kwargs) -> TrainingHistory:
    """:func:`~pyro_causalcell.infer.fit` ``realign_after`` epochs, :func:`realign_latents`,
    then fit the remaining ``max_epochs - realign_after`` epochs (no KL warm-up, fresh Adam).

    Parameters
    ----------
    model, data
        As for :func:`realign_latents`.
    max_epochs : int
        Epochs in all.
    realign_after : int
        Epochs before the realignment, ``1 <= realign_after < max_epochs``.
    n_starts : int
    seed : int
        Seeds both fits (the same training / validation split) and the realignment.
    **fit_kwargs
        Further :func:`~pyro_causalcell.infer.fit` arguments (``lr``, ``batch_size``,
        ``kl_warmup_epochs`` for the first part, ...).

    Returns
    -------
    TrainingHistory
        Both fits' epochs, one after the other.
    """
    if not 1 <= realign_after < max_epochs:
        raise ValueError(f"realign_after must be in [1, max_epochs), got {realign_after} with "
                         f"max_epochs={max_epochs}")
    if fit_kwargs.get("checkpoint") is not None:
        raise ValueError("checkpoint is not supported by fit_with_realignment (both parts "
                         "would share the file): checkpoint single fits with fit(...)")
    _require_sparse_prior(model, "fit_with_realignment")  # before any epoch is spent
    first = fit(model, data, max_epochs=realign_after, seed=seed, **fit_kwargs)
    realign_latents(model, data, n_starts=n_starts, seed=seed)
    second = fit(model, data, max_epochs=max_epochs - realign_after, seed=seed,
                 **{**fit_kwargs, "kl_warmup_epochs": 0})
    return first.followed_by(second)
