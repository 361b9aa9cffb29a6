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


class _GatherRows(torch.autograd.Function):
    """All-gather along dim 0 whose backward hands each rank the gradient of its own rows, summed
    over the ranks (every rank's loss used every row)."""

    @staticmethod
    def forward(ctx, x: torch.Tensor) -> torch.Tensor:
        parts = [torch.empty_like(x) for _ in range(tdist.get_world_size())]
        tdist.all_gather(parts, x.contiguous())
        ctx.rank, ctx.rows = tdist.get_rank(), x.shape[0]
        return torch.cat(parts)  # [world * B, ...]

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        grad = grad.contiguous()
        tdist.all_reduce(grad)
        return grad[ctx.rank * ctx.rows:(ctx.rank + 1) * ctx.rows]


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
        """``model`` under DistributedDataParallel (itself for one process).

        A fine-tuned model may spend its first epochs on cached features (``--freeze-epochs``), when the
        backbone takes no part in the forward pass: DDP is then told to expect unused parameters.
        """
        if self.world == 1:
            return model
        ids = [self.device.index] if self.device.type == "cuda" else None
        finetune = bool(getattr(getattr(model, "cfg", None), "finetune", False))
        return nn.parallel.DistributedDataParallel(model, device_ids=ids, find_unused_parameters=finetune)

    def sampler(self, dataset: Dataset, seed: int):
        if self.world == 1:
            return None
        return DistributedSampler(dataset, num_replicas=self.world, rank=self.rank, shuffle=True, seed=seed,
                                  drop_last=True)

    def gather(self, out: dict[str, torch.Tensor], labels: torch.Tensor
               ) -> tuple[dict[str, torch.Tensor], torch.Tensor]:
        """Every rank's batch of model outputs and labels, concatenated in rank order.

        Batch losses (CMPM, InfoNCE, the contrastive and correlation terms) then see the global batch,
        as a single process would. Gradients flow back to this rank's rows (the autograd all-gather
        sums them over ranks; DDP then averages over ranks), so the update equals the one-process one.
        Every rank must pass the same batch size (the DistributedSampler drops the remainder).
        """
        if self.world == 1:
            return out, labels
        gathered = {k: _GatherRows.apply(v) for k, v in out.items()}  # [world * B, ...]
        parts = [torch.empty_like(labels) for _ in range(self.world)]
        tdist.all_gather(parts, labels.contiguous())
        return gathered, torch.cat(parts)

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
