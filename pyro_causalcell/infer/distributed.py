"""Training across processes with PyTorch's DistributedDataParallel (``fit(strategy="ddp")``).

Launch one process per device with ``torchrun`` (which sets ``RANK``, ``WORLD_SIZE``,
``LOCAL_RANK`` and the rendezvous address); each calls :func:`~pyro_causalcell.infer.fit` on the
same data with ``strategy="ddp"``::

    torchrun --nproc_per_node 2 my_fit.py            # 2 processes on this machine
    torchrun --nnodes 4 --nproc_per_node 8 --rdzv-endpoint host:29500 my_fit.py

What each process does:

- the train / validation split is the same in every process (it depends on ``seed`` only);
  the training cells are dealt out in turn (cell ``i`` of the shuffled training set to process
  ``i mod world_size``), so each process draws minibatches from its own shard, padded by at
  most one repeated cell so that every process takes the same number of steps;
- the ``"cells"`` plate keeps the size of the whole training set, so each process's loss is an
  estimate of the same ELBO, and DistributedDataParallel averages the gradients: the update is
  that of one process with ``world_size`` times the batch size;
- parameters start from process 0's and stay identical, so global sites (perturbation shifts,
  target probabilities) stay synchronised; buffers are made to agree at the end of each epoch
  (batch-norm statistics averaged over processes);
- the history's ELBO is summed over shards; the validation ELBO and early stopping use the
  whole validation set, evaluated by every process, with process 0's value broadcast;
- adversaries' gradients are averaged over processes before each of their steps;
- with ``checkpoint=``, process 0 writes the file and every process resumes from it.

The backend is ``"nccl"`` on CUDA and ``"gloo"`` on the CPU; the process group is created here
when the launcher has not created one.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Iterable, Iterator

import torch
import torch.distributed as dist
from torch import nn

__all__ = ["SingleProcess", "DataParallel", "make_strategy", "LAUNCH_HINT"]

#: the DistributedDataParallel keyword that turns off its buffer broadcast at every forward pass
_BUFFER_SYNC_KEYWORD = ("forward_sync_buffers" if "forward_sync_buffers" in
                        inspect.signature(nn.parallel.DistributedDataParallel).parameters
                        else "broadcast_buffers")

LAUNCH_HINT = ("launch one process per device with torchrun, e.g. "
               "'torchrun --nproc_per_node 2 my_fit.py', and call fit(..., strategy=\"ddp\") in "
               "each")


class SingleProcess:
    """Training in this process alone (``strategy=None``): every hook is the identity."""

    rank, world_size = 0, 1
    is_main = True

    def device(self, device: torch.device) -> torch.device:
        return device

    def shard(self, train_index: torch.Tensor) -> torch.Tensor:
        return train_index

    def wrap(self, module: nn.Module) -> nn.Module:
        return module

    def batches(self, batches: Iterable, n_cells: int) -> Iterator:
        return iter(batches)

    def total(self, values: list[float]) -> list[float]:
        return values

    def from_main(self, value: float) -> float:
        return value

    def average_gradients(self, parameters: Iterable[nn.Parameter]) -> None:
        return None

    def synchronise_buffers(self, module: nn.Module) -> None:
        return None


class DataParallel(SingleProcess):
    """Training across ``torch.distributed`` processes, gradients averaged by
    :class:`torch.nn.parallel.DistributedDataParallel`.

    Parameters
    ----------
    device : torch.device
        The device ``fit`` was asked for; on CUDA each process takes ``cuda:LOCAL_RANK``.

    Raises
    ------
    RuntimeError
        Not launched as several processes (no process group and no ``WORLD_SIZE`` set).
    """

    def __init__(self, device: torch.device):
        if not dist.is_available():
            raise RuntimeError("strategy='ddp' needs torch.distributed, which this PyTorch "
                               "build lacks")
        if not dist.is_initialized():
            if "WORLD_SIZE" not in os.environ:
                raise RuntimeError(f"strategy='ddp' was given but this process was not "
                                   f"launched as one of several: {LAUNCH_HINT}")
            backend = "nccl" if device.type == "cuda" else "gloo"
            dist.init_process_group(backend=backend)
        self.rank, self.world_size = dist.get_rank(), dist.get_world_size()
        self.is_main = self.rank == 0
        self._device = device

    def device(self, device: torch.device) -> torch.device:
        if device.type == "cuda" and device.index is None:
            local_rank, visible = int(os.environ.get("LOCAL_RANK", 0)), torch.cuda.device_count()
            if local_rank >= visible:
                raise RuntimeError(
                    f"strategy='ddp' on CUDA gives each process its own GPU, but this process "
                    f"has LOCAL_RANK={local_rank} and {visible} GPU(s) are visible: launch at "
                    f"most {visible} process(es) per machine (torchrun --nproc_per_node "
                    f"{visible}), or train on the CPU with device='cpu'.")
            device = torch.device("cuda", local_rank)
            torch.cuda.set_device(device)
        self._device = device
        return device

    def shard(self, train_index: torch.Tensor) -> torch.Tensor:
        """This process's training cells: every ``world_size``-th of the (shuffled) training
        set, padded with its first cell to the common length."""
        size = -(-len(train_index) // self.world_size)
        mine = train_index[self.rank::self.world_size]
        if len(mine) < size:
            mine = torch.cat([mine, mine[:size - len(mine)]])
        return mine

    def wrap(self, module: nn.Module) -> nn.Module:
        """``module`` under DistributedDataParallel (parameters and buffers broadcast from
        process 0 at the start)."""
        # buffers are made to agree once per epoch (synchronise_buffers), not at every step;
        # torch 2.13 renamed the switch (``broadcast_buffers`` warns there)
        return nn.parallel.DistributedDataParallel(module, find_unused_parameters=True,
                                                   **{_BUFFER_SYNC_KEYWORD: False})

    def batches(self, batches: Iterable, n_cells: int) -> Iterator:
        """The batches while every process still has one (a process whose sampler runs out
        first ends the epoch for all; with the default sampler they all run out together),
        each with the ``"cells"`` plate of the whole training set (``n_cells``)."""
        iterator = iter(batches)
        while True:
            batch = next(iterator, None)
            flag = self._tensor([0.0 if batch is None else 1.0])
            dist.all_reduce(flag, op=dist.ReduceOp.MIN)
            if flag.item() == 0.0:
                return
            batch.n_cells = n_cells
            yield batch

    def _tensor(self, values: list[float]) -> torch.Tensor:
        """``values`` where the backend's collectives want them (CUDA for nccl)."""
        device = self._device if dist.get_backend() == "nccl" else "cpu"
        return torch.tensor(values, dtype=torch.float64, device=device)

    def total(self, values: list[float]) -> list[float]:
        """Each value summed over processes."""
        if not values:
            return values
        tensor = self._tensor(values)
        dist.all_reduce(tensor)
        return tensor.tolist()

    def from_main(self, value: float) -> float:
        """Process 0's ``value``, in every process."""
        tensor = self._tensor([value])
        dist.broadcast(tensor, src=0)
        return float(tensor.item())

    def average_gradients(self, parameters: Iterable[nn.Parameter]) -> None:
        for parameter in parameters:
            if parameter.grad is not None:
                dist.all_reduce(parameter.grad)
                parameter.grad /= self.world_size

    def synchronise_buffers(self, module: nn.Module) -> None:
        """Make the buffers agree at the end of an epoch: floating ones (batch-norm
        statistics) averaged over processes, boolean ones or-ed (LORD's cells that have a
        code), integer ones process 0's."""
        for buffer in module.buffers():
            if buffer.is_floating_point():
                dist.all_reduce(buffer)
                buffer /= self.world_size
            elif buffer.dtype == torch.bool:
                flags = buffer.to(torch.uint8)
                dist.all_reduce(flags, op=dist.ReduceOp.MAX)
                buffer.copy_(flags.bool())
            else:
                dist.broadcast(buffer, src=0)


def make_strategy(strategy: str | None, device: torch.device) -> SingleProcess:
    """``None`` -> :class:`SingleProcess`; ``"ddp"`` -> :class:`DataParallel`."""
    if strategy is None:
        return SingleProcess()
    if strategy == "ddp":
        return DataParallel(device)
    raise ValueError(f"strategy={strategy!r}; use None (one process) or 'ddp' ({LAUNCH_HINT})")
