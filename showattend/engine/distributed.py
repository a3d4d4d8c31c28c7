"""Processes and devices: joining torchrun's process group, this process's slice of a global batch, and moving
batches to the device without waiting for it."""
from __future__ import annotations

import os
from datetime import timedelta
from typing import List, NamedTuple, Sequence, Tuple

import torch
import torch.distributed as dist
from torch.utils.data import Dataset, Sampler

from ..runs import resolve_device

__all__ = ["DistInfo", "setup_distributed", "runnable_batches", "shard", "to_device",
           "buffers_trained"]


class DistInfo(NamedTuple):
    """rank, world size and local rank of this process (0, 1, 0 without torchrun)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def setup_distributed(device: str = "auto"):
    """Join the torchrun process group when launched by torchrun (``WORLD_SIZE`` set); choose the device.

    Returns:
        (:class:`DistInfo`, torch.device): under torchrun on CUDA each process gets ``cuda:LOCAL_RANK``.

    Raises:
        ValueError: ``device`` is not auto, cpu or cuda[:N], or cuda is asked for and absent.
    """
    dev = resolve_device(device)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistInfo(), dev
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if dev.type == "cuda":
        dev = torch.device("cuda", local)
        torch.cuda.set_device(dev)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if dev.type == "cuda" else "gloo", timeout=timedelta(hours=2))
    return DistInfo(rank, world, local), dev


def to_device(batch, device: torch.device, non_blocking: bool = False):
    """Move a tensor, or the tensor fields of a NamedTuple batch, to ``device``; other fields (e.g. the lists of
    lengths the host needs) are passed on as they are."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device, non_blocking=non_blocking)
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(to_device(x, device, non_blocking) for x in batch))
    return batch


class _Positioned(Dataset):
    """Items of the task's dataset addressed as (index, position in the global batch)."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self):
        return len(self.dataset)

    def __getitem__(self, ip):
        return self.dataset[ip[0]], ip[1]


class _LocalBatches(Sampler):
    """The batch sampler: this process's slices of the current epoch's global batches, from a position on.
    The main process sets them before each epoch, so persistent workers survive across epochs."""

    def __init__(self):
        self.batches: List[List[tuple]] = []

    def __iter__(self):
        return iter(self.batches)

    def __len__(self):
        return len(self.batches)


def runnable_batches(batches: Sequence[Sequence[int]], pos: int, world: int
                     ) -> Tuple[List[Tuple[int, Sequence[int]]], List[Tuple[int, Sequence[int]]]]:
    """The global batches an epoch trains from position ``pos`` on, with their positions, and those it skips.

    Positions index ``batches`` as the task made them, whatever the world size, so that a run saved at a
    position resumes there under another number of processes. A batch with fewer items than ``world`` (a
    process would get none) is skipped, not dropped from the list: dropping it shifted every later position.

    Returns:
        ([(position, batch)] to train, [(position, batch)] skipped from ``pos`` on).
    """
    todo = [(i, b) for i, b in enumerate(batches) if i >= pos]
    return [(i, b) for i, b in todo if len(b) >= world], [(i, b) for i, b in todo if len(b) < world]


def shard(batch: Sequence[int], rank: int, world: int) -> List[tuple]:
    """This rank's contiguous slice of a global batch as (index, position) pairs (sizes differ by at most 1)."""
    n = len(batch)
    lo, hi = rank * n // world, (rank + 1) * n // world
    return [(batch[p], p) for p in range(lo, hi)]


def buffers_trained(model: torch.nn.Module) -> bool:
    """Whether a training step of ``model`` (in training mode) can change one of its buffers: a batch norm that
    tracks running statistics and is in training mode once ``model.train()`` has run."""
    was = model.training
    model.train()
    trained = any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats
                  for m in model.modules())
    model.train(was)
    return trained
