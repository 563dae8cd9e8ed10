"""pyro_causalcell: causal and disentangled representation learning for single-cell counts.

Every method is a Pyro model/guide pair over one data layer (:mod:`pyro_causalcell.data`),
trained by one engine (:func:`fit`) and queried by shared engines (:func:`latent`).
"""

from . import sites
from ._version import __version__
from .data import (BalancedSampler, CellBatch, CellData, CellSchema, DataValidationError,
                   RandomSampler, WithinGroupSampler)
from .infer import (LatentClassifier, TrainingHistory, counterfactual, covariate_posterior, fit,
                    fit_restarts, fit_with_realignment, global_posterior, interventional, latent,
                    latent_arithmetic, load, realign_latents, save, sparse_shift_schedule,
                    transfer)
from .models import (FCR, HSICVAE, LORD, VAE, InVAE, MultiGroupVI, SparseShiftVAE,
                     register_model, target_probabilities)

__all__ = ["__version__", "sites", "CellBatch", "CellData", "CellSchema", "DataValidationError",
           "RandomSampler", "BalancedSampler", "WithinGroupSampler",
           "TrainingHistory", "fit", "fit_restarts", "fit_with_realignment", "realign_latents",
           "sparse_shift_schedule", "latent", "load", "save", "transfer", "global_posterior",
           "counterfactual", "interventional", "latent_arithmetic", "covariate_posterior", "LatentClassifier",
           "VAE", "SparseShiftVAE", "InVAE", "MultiGroupVI", "HSICVAE", "FCR", "LORD",
           "target_probabilities", "register_model"]
