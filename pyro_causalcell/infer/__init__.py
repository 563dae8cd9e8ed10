"""Engines that work on any model following the model protocol: fit, latent, save / load."""

from .device import resolve_device
from .fit import TrainingDivergedError, evaluate_elbo, fit
from .history import TrainingHistory
from .latent import latent
from .serialization import ModelSchemaMismatchError, load, save

__all__ = ["fit", "latent", "save", "load", "evaluate_elbo", "resolve_device",
           "TrainingHistory", "TrainingDivergedError", "ModelSchemaMismatchError"]
