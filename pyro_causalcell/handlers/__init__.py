"""Poutine messengers: latent scaling (KL warm-up), penalty weights, stochastic interventions and
exogenous noise (abduction and replay, for counterfactuals); and the switch that spares
registering a model's networks with Pyro while the training engine optimises them."""

from ..distributions import CoordinateMixture  # re-exported: it used to live here
from .exogenous_noise import (AbductionMessenger, Noise, NoiseReplayMessenger, abduct,
                              predict, register_noise_family)
from .latent_scale import LatentScaleMessenger, scale_latents
from .parameters import engine_holds_parameters, register_module
from .penalties import PenaltyMessenger, block_penalties
from .stochastic_intervention import (StochasticInterventionMessenger, intervene_on_coordinates,
                                      stochastic_intervention)

__all__ = ["LatentScaleMessenger", "scale_latents", "StochasticInterventionMessenger",
           "stochastic_intervention", "intervene_on_coordinates", "CoordinateMixture",
           "AbductionMessenger", "NoiseReplayMessenger", "Noise", "abduct", "predict",
           "register_noise_family",
           "PenaltyMessenger", "block_penalties", "register_module", "engine_holds_parameters"]
