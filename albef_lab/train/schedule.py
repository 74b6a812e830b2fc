"""Optimiser groups, the learning-rate schedule and the MoD alpha ramp (pure functions of the step)."""

from __future__ import annotations

import math

import torch
from torch import nn


def param_groups(model: nn.Module, weight_decay: float, lr_scales: dict[str, float] | None = None) -> list[dict]:
    """AdamW groups as the original: no decay for 1-D tensors and biases; everything else decayed
    (0-d `temp`, `cls_token` and `pos_embed` included). Frozen momentum weights are left out.
    `lr_scales` {name prefix: share of the lr}: those parameters get groups of their own at that share."""
    lr_scales = lr_scales or {}
    groups = {}
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        scale = next((s for prefix, s in lr_scales.items() if name.startswith(prefix)), 1.0)
        decayed = not (p.ndim == 1 or name.endswith(".bias"))
        groups.setdefault((scale, decayed), []).append(p)
    order = [(1.0, True), (1.0, False), *((s, d) for s in lr_scales.values() for d in (True, False))]
    return [{"params": groups[key], "weight_decay": weight_decay if key[1] else 0.0, "lr_scale": key[0]}
            for key in dict.fromkeys(order) if key in groups]


def lr_at(step: int, total: int, lr: float, min_lr: float, warmup_steps: int, warmup_lr: float) -> float:
    """Linear warm-up from warmup_lr to lr, then cosine decay to min_lr at `total` steps."""
    if step < warmup_steps:
        return warmup_lr + (lr - warmup_lr) * step / max(1, warmup_steps)
    progress = min(1.0, (step - warmup_steps) / max(1, total - warmup_steps))
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + math.cos(math.pi * progress))


def alpha_at(step: int, steps_per_epoch: int, alpha: float) -> float:
    """MoD weight: ramps linearly 0 -> alpha over the first epoch, then stays."""
    return alpha * min(1.0, step / max(1, steps_per_epoch))


def adamw(model: nn.Module, lr: float, weight_decay: float, fused: bool = True,
          lr_scales: dict[str, float] | None = None) -> torch.optim.AdamW:
    """AdamW over `param_groups`. `fused`: one vectorised kernel for every parameter (CPU and CUDA) instead of the
    per-parameter Python loop torch runs on a CPU by default — ~10x less optimiser time at base size
    (`benchmarks/profile_step.py`), the same update up to float rounding."""
    return torch.optim.AdamW(param_groups(model, weight_decay, lr_scales), lr=lr, fused=fused)


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for g in optimizer.param_groups:
        g["lr"] = lr * g.get("lr_scale", 1.0)
