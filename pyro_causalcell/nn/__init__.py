"""Networks shared by all models: MLP, Gaussian encoder, count decoder."""

from .decoder import CountDecoder
from .encoder import GaussianEncoder
from .mlp import MLP

__all__ = ["MLP", "GaussianEncoder", "CountDecoder"]
