"""Minibatch samplers for training: random, balanced over a covariate, and within-group.

A sampler turns the training cells into an epoch of :class:`CellBatch` objects. Each batch's
``"cells"`` plate has the size of the training set, and where a sampler includes some cells
more often than others (balanced batches) each cell carries a ``weight`` (the inverse of its
relative inclusion rate) that :func:`~pyro_causalcell.models.components.cells_plate` applies,
so the minibatch ELBO stays an unbiased estimate of the ELBO over all training cells.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import replace
from typing import Protocol, runtime_checkable

import torch

from .batch import CellBatch
from .celldata import CellData

__all__ = ["Sampler", "RandomSampler", "BalancedSampler", "WithinGroupSampler", "group_codes",
           "stratified_split"]


def group_codes(data: CellData, names: str | Sequence[str]) -> torch.Tensor:
    """``(n_cells,)`` long group index of each cell, one group per combination of covariates.

    Parameters
    ----------
    data : CellData
    names : str or sequence of str
        ``"domain"``, ``"label"``, ``"perturbation"`` (each distinct multi-hot row, so control
        and ``"A+B"`` are groups of their own), ``"dose"`` or a named categorical covariate.

    Raises
    ------
    ValueError
        A name the data does not carry.
    """
    names = [names] if isinstance(names, str) else list(names)
    columns = []
    for name in names:
        value = data.covariate_values(name)
        if value is None:
            raise ValueError(f"the data has no covariate {name!r} to group cells by; it carries "
                             f"{list(data.schema.carried)}")
        value = value.reshape(len(value), -1)
        if value.is_floating_point() and not bool((value == value.round()).all()):
            raise ValueError(f"covariate {name!r} is continuous; group cells by a categorical "
                             "one")
        columns.append(torch.unique(value, dim=0, return_inverse=True)[1])
    stacked = torch.stack(columns, 1)
    return torch.unique(stacked, dim=0, return_inverse=True)[1]


def stratified_split(groups: torch.Tensor, fraction: float, generator: torch.Generator
                     ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(train, validation)`` positions holding out ``round(fraction * n_g)`` of each group."""
    train, validation = [], []
    for group in torch.unique(groups).tolist():
        members = torch.nonzero(groups == group).squeeze(1)
        members = members[torch.randperm(len(members), generator=generator)]
        n_validation = int(round(fraction * len(members)))
        validation.append(members[:n_validation])
        train.append(members[n_validation:])
    return torch.cat(train).sort().values, torch.cat(validation).sort().values


@runtime_checkable
class Sampler(Protocol):
    """Anything with ``batches(data, indices, batch_size, generator)`` yielding CellBatch."""

    def batches(self, data: CellData, indices: torch.Tensor, batch_size: int,
                generator: torch.Generator) -> Iterator[CellBatch]: ...


class RandomSampler:
    """Shuffle the training cells and cut them into consecutive batches (each cell once).

    Counts on disk (:meth:`CellData.from_store <pyro_causalcell.data.CellData.from_store>`,
    a backed AnnData) are read in blocks so that disk reads stay sequential: the training cells,
    in file order, are cut into chunks of ``chunk_size`` consecutive cells; an epoch visits the
    chunks in random order, ``chunks_per_block`` at a time, reads each block of chunks in one
    pass and shuffles its cells into batches (the cells left over at a block's end open the
    next block's first batch). Each cell is still seen once per epoch; a batch mixes cells of
    ``chunks_per_block`` places in the file. In-memory data is shuffled as a whole.

    Parameters
    ----------
    chunk_size : int
        Consecutive cells per chunk (on-disk data only).
    chunks_per_block : int
        Chunks read and shuffled together (on-disk data only); a block holds
        ``chunk_size * chunks_per_block`` cells in memory.
    """

    def __init__(self, chunk_size: int = 1024, chunks_per_block: int = 32):
        if chunk_size < 1 or chunks_per_block < 1:
            raise ValueError(f"chunk_size and chunks_per_block must be >= 1, got {chunk_size}, "
                             f"{chunks_per_block}")
        self.chunk_size, self.chunks_per_block = chunk_size, chunks_per_block

    def batches(self, data: CellData, indices: torch.Tensor, batch_size: int,
                generator: torch.Generator) -> Iterator[CellBatch]:
        if not getattr(data.counts, "on_disk", False):
            return data.batches(batch_size, indices, shuffle=True, generator=generator)
        return self._blockwise(data, indices, batch_size, generator)

    def _blockwise(self, data: CellData, indices: torch.Tensor, batch_size: int,
                   generator: torch.Generator) -> Iterator[CellBatch]:
        n = len(indices)
        chunks = indices.cpu().sort().values.split(self.chunk_size)
        order = torch.randperm(len(chunks), generator=generator).tolist()
        carried_index = torch.empty(0, dtype=torch.long)
        carried_counts = None
        for first in range(0, len(order), self.chunks_per_block):
            block = torch.cat([chunks[c] for c in order[first:first + self.chunks_per_block]])
            block = block[torch.randperm(len(block), generator=generator)]
            counts = data.counts.load(block)
            rows = torch.arange(len(block))
            start = 0
            if carried_counts is not None:  # complete the batch begun in the last block
                start = batch_size - len(carried_index)
                index = torch.cat([carried_index, block[:start]])
                dense = torch.cat([carried_counts, counts.rows(rows[:start])])
                carried_counts = None
                if len(index) < batch_size:  # this block too was smaller than the batch
                    carried_index, carried_counts = index, dense
                    continue
                yield data.batch(index, n_cells=n, counts=dense)
            for position in range(start, len(block), batch_size):
                picked = rows[position:position + batch_size]
                if len(picked) < batch_size:
                    carried_index, carried_counts = block[picked], counts.rows(picked)
                    break
                yield data.batch(block[picked], n_cells=n, counts=counts.rows(picked))
        if carried_counts is not None:
            yield data.batch(carried_index, n_cells=n, counts=carried_counts)

    def __repr__(self) -> str:
        return (f"RandomSampler(chunk_size={self.chunk_size}, "
                f"chunks_per_block={self.chunks_per_block})")


class _GroupedSampler:
    """A sampler defined by the groups of some covariates (see :func:`group_codes`)."""

    def __init__(self, covariates: str | Sequence[str]):
        self.covariates = covariates

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.covariates!r})"

    def _members(self, data: CellData, indices: torch.Tensor) -> list[torch.Tensor]:
        """The positions in ``indices`` of each group's cells, one tensor per group."""
        groups = group_codes(data, self.covariates).to(data.device).index_select(0, indices)
        return [indices[groups == g] for g in torch.unique(groups)]


class BalancedSampler(_GroupedSampler):
    """Every batch holds (about) the same number of cells of each group of ``covariates``.

    An epoch has ``ceil(n / batch_size)`` batches; each draws ``batch_size / n_groups`` cells
    of every group without replacement within the epoch (a small group is reshuffled and reused
    when used up). Cells of a group of size ``n_g`` are seen ``n / (n_groups n_g)`` times as
    often as under random batches, so each carries the weight ``n_groups n_g / n`` that
    :func:`~pyro_causalcell.models.components.cells_plate` applies.

    Parameters
    ----------
    covariates : str or sequence of str
        What defines the groups (see :func:`group_codes`), e.g. ``"domain"`` for multiGroupVI.
    reweight : bool
        Attach the weights, so the objective stays that of the data as sampled (the default).
        ``False`` trains on the balanced population itself, in which every group weighs the
        same: with groups ``["label", "domain"]`` label and domain are independent there,
        the reweighting of invariant learning that removes a sample's label-batch association.
    """

    def __init__(self, covariates: str | Sequence[str], reweight: bool = True):
        super().__init__(covariates)
        self.reweight = reweight

    def __repr__(self) -> str:
        return f"BalancedSampler({self.covariates!r}, reweight={self.reweight})"

    def batches(self, data: CellData, indices: torch.Tensor, batch_size: int,
                generator: torch.Generator) -> Iterator[CellBatch]:
        indices = indices.to(data.device)
        members = self._members(data, indices)
        n, n_groups = len(indices), len(members)
        if batch_size < n_groups:
            raise ValueError(f"batch_size={batch_size} is smaller than the {n_groups} groups of "
                             f"{self.covariates!r}; every batch must hold each group")
        weights = [torch.full((len(m),), n_groups * len(m) / n, device=data.device)
                   for m in members]
        queues = [_Queue(m, w, generator) for m, w in zip(members, weights)]
        per_group = [batch_size // n_groups + (g < batch_size % n_groups)
                     for g in range(n_groups)]
        for _ in range(-(-n // batch_size)):
            drawn = [queue.take(k) for queue, k in zip(queues, per_group)]
            index = torch.cat([d[0] for d in drawn])
            weight = torch.cat([d[1] for d in drawn])
            yield replace(data.batch(index, n_cells=n), weight=weight if self.reweight else None)


class WithinGroupSampler(_GroupedSampler):
    """Batches drawn from one group at a time (e.g. one (cell line, treatment) pair), so
    within-batch permutations stay within the group; each cell once per epoch.

    Parameters
    ----------
    covariates : str or sequence of str
        What defines the groups (see :func:`group_codes`).
    """

    def batches(self, data: CellData, indices: torch.Tensor, batch_size: int,
                generator: torch.Generator) -> Iterator[CellBatch]:
        indices = indices.to(data.device)
        chunks = []
        for members in self._members(data, indices):
            members = members[torch.randperm(len(members), generator=generator).to(data.device)]
            chunks.extend(members.split(batch_size))
        for position in torch.randperm(len(chunks), generator=generator).tolist():
            yield data.batch(chunks[position], n_cells=len(indices))


class _Queue:
    """Cells of one group handed out in shuffled order, reshuffled when used up."""

    def __init__(self, members: torch.Tensor, weights: torch.Tensor,
                 generator: torch.Generator):
        self.members, self.weights, self.generator = members, weights, generator
        self.order = torch.empty(0, dtype=torch.long)

    def take(self, k: int) -> tuple[torch.Tensor, torch.Tensor]:
        while len(self.order) < k:
            fresh = torch.randperm(len(self.members), generator=self.generator)
            self.order = torch.cat([self.order, fresh])
        picked, self.order = self.order[:k], self.order[k:]
        picked = picked.to(self.members.device)
        return self.members[picked], self.weights[picked]
