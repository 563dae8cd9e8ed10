"""Engines that work on any model following the model protocol: fit, latent, transfer,
posteriors, counterfactuals, save / load."""

from .checkpoint import CheckpointMismatchError
from .counterfactual import (check_intervention_tensor, counterfactual, intervention_tensor,
                             interventional)
from .covariate_posterior import covariate_posterior
from .device import resolve_device
from .elbo import DeviceTraceELBO
from .free_bits import FreeBitsELBO
from .fit import TrainingDivergedError, evaluate_elbo, fit
from .history import TrainingHistory
from .latent import latent
from .latent_arithmetic import latent_arithmetic, latent_shift
from .likelihood import COVARIATE_SITES, importance_weighted_elbo, mean_importance_weighted_elbo
from .posterior import global_posterior
from .predictor import LatentClassifier, train_classifier
from .realign import Realignment, fit_with_realignment, realign_latents, search_alignment
from .restarts import Restart, fit_restarts, restart_score
from .schedule import sparse_shift_schedule
from .serialization import ModelFileError, ModelSchemaMismatchError, load, save
from .transfer import TransferResult, known_rows_unchanged, transfer

__all__ = ["fit", "latent", "save", "load", "transfer", "TransferResult", "known_rows_unchanged",
           "global_posterior", "counterfactual", "interventional", "intervention_tensor",
           "check_intervention_tensor",
           "evaluate_elbo", "resolve_device", "TrainingHistory", "TrainingDivergedError",
           "ModelSchemaMismatchError", "ModelFileError", "CheckpointMismatchError",
           "importance_weighted_elbo", "mean_importance_weighted_elbo", "COVARIATE_SITES",
           "LatentClassifier", "train_classifier", "covariate_posterior", "latent_arithmetic",
           "latent_shift", "DeviceTraceELBO", "FreeBitsELBO", "fit_restarts", "Restart",
           "restart_score",
           "realign_latents", "fit_with_realignment", "Realignment", "search_alignment",
           "sparse_shift_schedule"]
