r"""The HSIC-constrained VAE (Lopez, Regier, Jordan, Yosef, 2018).

A :class:`~pyro_causalcell.models.VAE` whose objective adds a penalty on the HSIC between its
latents and a nuisance (by default the one-hot domain; named covariates such as a QC score
too), computed on the reparameterised samples of each minibatch with Gaussian kernels of the
study's dimension-based bandwidth (:func:`~pyro_causalcell.kernels.dimension_bandwidth`):

.. math::
    \mathcal{L} = \mathrm{ELBO} - \lambda\, N\, \widehat{\mathrm{HSIC}}(z, u).

The penalty is the factor site ``"hsic"``; :func:`~pyro_causalcell.fit` reports it beside
the ELBO.
"""

from __future__ import annotations

from collections.abc import Sequence

import pyro
import torch

from .. import sites
from ..data import CellBatch, CellSchema
from ..kernels import dimension_bandwidth, gaussian_kernel, hsic
from .components import covariate_values, features
from .registry import register_model
from .vae import VAE

__all__ = ["HSICVAE"]

#: the factor site of the HSIC penalty
HSIC = "hsic"


@register_model
class HSICVAE(VAE):
    """A VAE whose latents are pushed towards independence of a nuisance.

    Parameters
    ----------
    schema : CellSchema
    n_latent : int
    hsic_weight : float
        :math:`\\lambda`, per cell (the penalty is scaled to the whole data set like the ELBO).
    nuisance : list of str, optional
        Covariates the latents should not encode: ``"domain"`` (default), named categorical
        (one-hot) or continuous covariates.
    **kwargs
        As in :class:`~pyro_causalcell.models.VAE` (``use_domain=True`` also gives the decoder
        the domain, as the study's scVI-based model).
    """

    variants = {"hsicvae": {}}

    def __init__(self, schema: CellSchema, n_latent: int = 10, hsic_weight: float = 1000.0,
                 nuisance: Sequence[str] | None = None, **kwargs):
        super().__init__(schema, n_latent=n_latent, **kwargs)
        nuisance = [sites.DOMAIN] if nuisance is None else list(nuisance)
        carried = [n for n in schema.carried if n != sites.PERTURBATION]
        unknown = [n for n in nuisance if n not in carried]
        if not nuisance or unknown:
            raise ValueError(f"nuisance={nuisance}: name covariates the data carries "
                             f"({carried}); encode them with CellData.from_anndata(..., "
                             "domain_key=..., categorical_covariate_keys=..., "
                             "continuous_covariate_keys=...)")
        if hsic_weight < 0:
            raise ValueError(f"hsic_weight must be >= 0, got {hsic_weight}")
        self.init_args.update(hsic_weight=hsic_weight, nuisance=nuisance)
        self.hsic_weight, self.nuisance = hsic_weight, nuisance

    def latent_penalties(self, batch: CellBatch, z: torch.Tensor,
                         covariates: dict[str, torch.Tensor]) -> None:
        """Factor ``"hsic"``: minus ``hsic_weight`` x cells x HSIC(z, nuisance)."""
        if self.hsic_weight == 0:
            return
        nuisance = features({**covariate_values(batch), **covariates}, self.nuisance,
                            self.schema)
        dependence = hsic(gaussian_kernel(z, dimension_bandwidth(z.shape[-1])),
                          gaussian_kernel(nuisance, dimension_bandwidth(nuisance.shape[-1])))
        pyro.factor(HSIC, -self.hsic_weight * batch.n_cells * dependence)
