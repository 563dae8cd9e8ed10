"""Networks shared by all models: MLP, Gaussian encoder, count decoder, and their dropout."""

from .decoder import CountDecoder
from .dropout import PackedDropout
from .encoder import GaussianEncoder
from .mlp import MLP

__all__ = ["MLP", "GaussianEncoder", "CountDecoder", "PackedDropout"]
