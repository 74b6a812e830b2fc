"""Process-group helpers that also work in a single process without one.

A leaf module: the models (queue gather) and the training engine both use it.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import Tensor


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def is_main_process() -> bool:
    """Rank 0 of the group, or of the torchrun launch (also after the group is destroyed)."""
    return (rank() if is_distributed() else int(os.environ.get("RANK", 0))) == 0


@torch.no_grad()
def all_gather_nograd(x: Tensor) -> Tensor:
    """Concatenate `x` from every rank in rank order (no gradient); `x` itself without a group."""
    if world_size() == 1:
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def setup(device_pref: str = "auto") -> torch.device:
    """Join the process group torchrun describes (NCCL on GPUs, gloo on CPU); single process otherwise."""


    use_cuda = torch.cuda.is_available() and device_pref in ("auto", "cuda")
    local_rank = int(os.environ.get("LOCAL_RANK", 0))
    if use_cuda:
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if int(os.environ.get("WORLD_SIZE", 1)) > 1 and not is_distributed():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return device


def cleanup() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()
