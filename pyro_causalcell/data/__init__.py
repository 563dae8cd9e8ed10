"""Data layer: AnnData -> :class:`CellData` (tensors + schema) -> :class:`CellBatch` minibatches."""

from .batch import CellBatch
from .celldata import CellData
from .on_disk import OnDiskCounts
from .samplers import BalancedSampler, RandomSampler, Sampler, WithinGroupSampler
from .schema import CellSchema, Covariate
from .storage import DenseCounts, SparseCounts
from .validation import (ControlLikePerturbationWarning, DataValidationError,
                         NonIntegerCountsWarning)

__all__ = ["CellBatch", "CellData", "CellSchema", "DenseCounts", "SparseCounts", "OnDiskCounts",
           "DataValidationError", "NonIntegerCountsWarning", "ControlLikePerturbationWarning",
           "Covariate", "Sampler", "RandomSampler", "BalancedSampler", "WithinGroupSampler"]
