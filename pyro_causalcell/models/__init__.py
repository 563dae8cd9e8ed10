"""Models: Pyro model/guide pairs following the package's model protocol."""

from . import components
from .vae import VAE

__all__ = ["VAE", "components"]
