"""Which latent dimensions a fitted model uses: the "active units" of Burda, Grosse and
Salakhutdinov (2016, *Importance Weighted Autoencoders*, section 5.2).

A dimension whose posterior mean hardly varies across cells gives every cell about the same
posterior there (the prior's, once the KL term has won), so the decoder cannot read anything
from it: the model describes the cells with the other dimensions only. Burda et al. call a
dimension active when the variance over cells of its posterior mean exceeds 0.01.
"""

from __future__ import annotations

import numpy as np

__all__ = ["ACTIVITY_THRESHOLD", "latent_activity", "inactive_latents"]

#: Burda et al.'s threshold on the variance over cells of a dimension's posterior mean
ACTIVITY_THRESHOLD = 0.01


def latent_activity(z) -> np.ndarray:
    """Variance over cells of each dimension's posterior mean.

    Parameters
    ----------
    z : (n_cells, n_latent) array
        Posterior means, e.g. :func:`~pyro_causalcell.infer.latent` or ``adata.obsm[...]``.

    Returns
    -------
    (n_latent,) array
    """
    z = np.asarray(z, dtype=float)
    if z.ndim != 2 or z.shape[0] < 2:
        raise ValueError(f"z must be a (n_cells, n_latent) array of at least 2 cells, got "
                         f"shape {z.shape}")
    if not np.isfinite(z).all():
        raise ValueError("z has NaN or infinite entries: check the fit's ELBO history")
    return z.var(axis=0)


def inactive_latents(z, threshold: float = ACTIVITY_THRESHOLD) -> list[int]:
    """Indices of the dimensions whose activity (:func:`latent_activity`) is below
    ``threshold``.

    Parameters
    ----------
    z : (n_cells, n_latent) array
        Posterior means.
    threshold : float
        Positive; default :data:`ACTIVITY_THRESHOLD` (0.01).

    Returns
    -------
    list of int
    """
    if not threshold > 0:
        raise ValueError(f"threshold must be positive, got {threshold}")
    return [int(k) for k in np.flatnonzero(latent_activity(z) < threshold)]
