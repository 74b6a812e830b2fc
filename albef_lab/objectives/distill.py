"""Momentum distillation: the EMA teacher update and the soft targets it provides."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@torch.no_grad()
def momentum_update(pairs: list[tuple[nn.Module, nn.Module]], momentum: float) -> None:
    """p_m <- momentum * p_m + (1 - momentum) * p for every (online, momentum) module pair.

    `.parameters()` yields tied/shared parameters once, so each is updated exactly once.
    """
    online, teacher = [], []
    for model, model_m in pairs:
        ps, pms = list(model.parameters()), list(model_m.parameters())
        if len(ps) != len(pms):
            raise ValueError(f"momentum pair differs: {len(ps)} online vs {len(pms)} momentum parameters")
        online += [p.detach() for p in ps]
        teacher += pms
    torch._foreach_mul_(teacher, momentum)
    torch._foreach_add_(teacher, online, alpha=1.0 - momentum)


@torch.no_grad()
def copy_params(pairs: list[tuple[nn.Module, nn.Module]]) -> None:
    """Start each momentum model as an exact copy of its online model; it never gets gradients."""
    for model, model_m in pairs:
        for p, p_m in zip(model.parameters(), model_m.parameters(), strict=True):
            p_m.copy_(p)
            p_m.requires_grad_(False)


def mix_targets(teacher_logits: Tensor, hard_targets: Tensor, alpha: float) -> Tensor:
    """alpha * softmax(teacher) + (1 - alpha) * hard targets (the MoD pseudo-targets)."""
    return alpha * F.softmax(teacher_logits, dim=-1) + (1.0 - alpha) * hard_targets


def soft_cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """Per-row -sum_j targets_j * log_softmax(logits)_j (not reduced)."""
    return -(F.log_softmax(logits, dim=-1) * targets).sum(dim=-1)
