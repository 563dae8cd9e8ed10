"""Data layer: AnnData -> :class:`CellData` (tensors + schema) -> :class:`CellBatch` minibatches."""

from .batch import CellBatch
from .celldata import CellData
from .schema import CellSchema
from .storage import DenseCounts, SparseCounts
from .validation import DataValidationError, NonIntegerCountsWarning

__all__ = ["CellBatch", "CellData", "CellSchema", "DenseCounts", "SparseCounts",
           "DataValidationError", "NonIntegerCountsWarning"]
