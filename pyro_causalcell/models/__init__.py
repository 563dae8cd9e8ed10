"""Models: Pyro model/guide pairs following the package's model protocol."""

from . import components
from .blocks import ConditionalNormalPrior, InteractionPrior, LatentBlock, NormalPrior
from .fcr import FCR
from .hsic_vae import HSICVAE
from .invae import InVAE
from .lord import LORD
from .multigroup import MultiGroupVI
from .registry import model_variants, register_model, registered_models
from .sparse_shift import SPARSITY, SparseShiftVAE, target_probabilities
from .vae import VAE

__all__ = ["VAE", "SparseShiftVAE", "InVAE", "MultiGroupVI", "HSICVAE", "FCR", "LORD", "SPARSITY", "target_probabilities", "components", "InteractionPrior",
           "register_model", "registered_models", "model_variants",
           "LatentBlock", "NormalPrior", "ConditionalNormalPrior"]
