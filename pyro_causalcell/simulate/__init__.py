"""Ground-truth generative processes written as Pyro programs."""

from .cell_types import CellTypeWorld, cell_types, cell_types_program

__all__ = ["cell_types", "cell_types_program", "CellTypeWorld"]
