r"""The HSIC-constrained VAE (Lopez, Regier, Jordan, Yosef, 2018).

A :class:`~pyro_causalcell.models.VAE` whose objective adds a penalty on the HSIC between its
latents and a nuisance :math:`u` (by default the one-hot domain; named covariates such as a QC
score too; and optionally a second latent block ``"z_nuisance"``, decoded beside ``"z"``,
which then carries what ``"z"`` must not, as the study's :math:`z` vs :math:`u` model),
computed on the reparameterised samples of each minibatch with Gaussian kernels of the
study's dimension-based bandwidth (:func:`~pyro_causalcell.kernels.dimension_bandwidth`):

.. math::
    \mathcal{L} = \mathrm{ELBO} - \lambda\, N\, \widehat{\mathrm{HSIC}}(z, u).

With several nuisances the kernel of :math:`u` is the product of one Gaussian kernel per
nuisance (the covariates' features, the latent block), so the penalty asks :math:`z` to be
independent of all of them jointly.

The penalty is the factor site ``"hsic"``; :func:`~pyro_causalcell.fit` reports it beside
the ELBO.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import pyro
import torch

from .. import sites
from ..data import CellBatch, CellSchema
from ..kernels import dimension_bandwidth, gaussian_kernel, hsic
from .blocks import LatentBlock, NormalPrior
from .components import covariate_values, features
from .registry import register_model
from .vae import VAE

__all__ = ["HSICVAE"]

#: the factor site of the HSIC penalty
HSIC = "hsic"
#: the site of the optional nuisance latent block
Z_NUISANCE = sites.latent_site("nuisance")


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
        (one-hot) or continuous covariates; ``[]`` with ``nuisance_latent`` for the latent
        block alone.
    nuisance_latent : int
        Width of a second latent block ``"z_nuisance"`` (prior :math:`\\mathcal{N}(0, I)`,
        its own encoder, decoded with ``"z"``) of which ``"z"`` is made independent; 0 (default)
        for none. With ``use_domain=False`` and ``nuisance=["domain"]`` the batch effect has
        to go through this block.
    **kwargs
        As in :class:`~pyro_causalcell.models.VAE` (``use_domain=True`` also gives the decoder
        the domain, as the study's scVI-based model).
    """

    variants = {"hsicvae": {}}

    def __init__(self, schema: CellSchema, n_latent: int = 10, hsic_weight: float = 1000.0,
                 nuisance: Sequence[str] | None = None, nuisance_latent: int = 0, **kwargs):
        super().__init__(schema, n_latent=n_latent, **kwargs)
        nuisance = [sites.DOMAIN] if nuisance is None else list(nuisance)
        carried = [n for n in schema.carried if n != sites.PERTURBATION]
        unknown = [n for n in nuisance if n not in carried]
        if not isinstance(nuisance_latent, int) or nuisance_latent < 0:
            raise ValueError(f"nuisance_latent must be an int >= 0 (the width of the "
                             f"'{Z_NUISANCE}' block; 0 for none), got {nuisance_latent!r}")
        if not (nuisance or nuisance_latent) or unknown:
            raise ValueError(f"nuisance={nuisance}: name covariates the data carries "
                             f"({carried}); encode them with CellData.from_anndata(..., "
                             "domain_key=..., categorical_covariate_keys=..., "
                             "continuous_covariate_keys=...); or pass nuisance=[] "
                             "with nuisance_latent > 0 for a latent nuisance alone")
        if hsic_weight < 0:
            raise ValueError(f"hsic_weight must be >= 0, got {hsic_weight}")
        self.init_args.update(hsic_weight=hsic_weight, nuisance=nuisance,
                              nuisance_latent=nuisance_latent)
        self.hsic_weight, self.nuisance = hsic_weight, nuisance
        if nuisance_latent:
            args = self.init_args
            self.other_blocks.append(LatentBlock(
                "nuisance", schema.n_genes, nuisance_latent, NormalPrior(nuisance_latent),
                n_encoder_covariates=self.n_covariates,
                hidden=[args["n_hidden"]] * args["n_layers"], dropout=args["dropout"],
                norm=args["norm"]))
            self.decoder = self.count_decoder(n_latent + nuisance_latent)

    def latent_penalties(self, batch: CellBatch, latents: dict[str, torch.Tensor],
                         covariates: dict[str, torch.Tensor]) -> None:
        """Factor ``"hsic"``: minus ``hsic_weight`` x cells x HSIC(z, nuisance)."""
        if self.hsic_weight == 0:
            return
        nuisances = [latents[Z_NUISANCE]] if Z_NUISANCE in latents else []
        if self.nuisance:
            nuisances.append(features({**covariate_values(batch), **covariates}, self.nuisance,
                                      self.schema))
        kernel = math.prod(gaussian_kernel(u, dimension_bandwidth(u.shape[-1]))
                           for u in nuisances)
        z = latents[sites.Z]
        dependence = hsic(gaussian_kernel(z, dimension_bandwidth(z.shape[-1])), kernel)
        pyro.factor(HSIC, -self.hsic_weight * batch.n_cells * dependence)
