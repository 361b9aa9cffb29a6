"""Multi-process training on torch.distributed (``torchrun --nproc_per_node N -m xmodal.train``).

Without ``WORLD_SIZE`` in the environment everything here is a no-op for a single process.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as tdist
from torch import nn
from torch.utils.data import Dataset, DistributedSampler


@dataclass
class DistContext:
    """Rank, world size and the device of this process."""

    rank: int = 0
    world: int = 1
    device: torch.device = torch.device("cpu")

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def broadcast(self, obj):
        """``obj`` as rank 0 has it."""
        if self.world == 1:
            return obj
        box = [obj]
        tdist.broadcast_object_list(box, src=0)
        return box[0]

    def barrier(self) -> None:
        if self.world > 1:
            tdist.barrier()

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.world == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        return nn.parallel.DistributedDataParallel(model, device_ids=ids)

    def sampler(self, dataset: Dataset, seed: int):
        if self.world == 1:
            return None
        return DistributedSampler(dataset, num_replicas=self.world, rank=self.rank, shuffle=True, seed=seed,
                                  drop_last=True)

    def mean(self, terms: dict[str, torch.Tensor]) -> dict[str, float]:
        """Loss terms averaged over ranks, as floats."""
        if self.world == 1:
            return {k: float(v) for k, v in terms.items()}
        keys = sorted(terms)
        vec = torch.stack([terms[k].float() for k in keys])
        tdist.all_reduce(vec)
        return {k: float(v) / self.world for k, v in zip(keys, vec)}

    def close(self) -> None:
        if self.world > 1 and tdist.is_initialized():
            tdist.destroy_process_group()


def setup(device: str = "auto") -> DistContext:
    """Join the process group that ``torchrun`` describes in the environment, if any."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return DistContext()
    use_cuda = device != "cpu" and torch.cuda.is_available()
    local = int(os.environ.get("LOCAL_RANK", "0"))
    tdist.init_process_group(backend="nccl" if use_cuda else "gloo")
    dev = torch.device("cuda", local) if use_cuda else torch.device("cpu")
    if use_cuda:
        torch.cuda.set_device(dev)
    return DistContext(rank=tdist.get_rank(), world=world, device=dev)
