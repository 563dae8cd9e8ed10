"""Ground-truth generative processes written as Pyro programs.

Each simulator is a Pyro program (so ``pyro.do`` and ``poutine.condition`` give true
interventional answers) plus a function returning an AnnData of integer counts with the truth
under documented keys.
"""

from .cell_types import CellTypeWorld, cell_types, cell_types_program
from .factorized import FactorizedWorld, factorized, factorized_program
from .invariant_spurious import (InvariantSpuriousWorld, invariant_spurious,
                                 invariant_spurious_program)
from .shared_private import SharedPrivateWorld, shared_private, shared_private_program
from .sparse_shift import (SparseShiftWorld, perturbation_matrix, sparse_shift,
                           sparse_shift_program, split_perturbations)

__all__ = ["cell_types", "cell_types_program", "CellTypeWorld",
           "factorized", "factorized_program", "FactorizedWorld",
           "invariant_spurious", "invariant_spurious_program", "InvariantSpuriousWorld",
           "shared_private", "shared_private_program", "SharedPrivateWorld",
           "sparse_shift", "sparse_shift_program", "SparseShiftWorld", "split_perturbations",
           "perturbation_matrix"]
