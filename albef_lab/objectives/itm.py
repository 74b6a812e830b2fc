"""Image-text matching (ITM) with hard negatives drawn from in-batch similarities."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


@torch.no_grad()
def negative_weights(sim: Tensor, same: Tensor | None = None, known: Tensor | None = None) -> Tensor:
    """softmax over the in-batch columns of `sim` [B, >=B], with positives zeroed.

    `same` [B, B] bool marks pairs that must never be negatives (same image id); default: the diagonal.
    `known` [B, B] bool marks pairs known to match (false negatives): zeroed too, except in a row where
    nothing else would be left. Rows are not renormalised (multinomial does that).
    """
    b = sim.shape[0]
    if b < 2:
        raise ValueError("ITM hard negatives need a batch of at least 2 image-text pairs")
    w = F.softmax(sim[:, :b].float(), dim=1)
    if same is None:
        w.fill_diagonal_(0)
    else:
        w = w.masked_fill(same, 0)
    if known is not None:
        filtered = w.masked_fill(known, 0)
        keep = filtered.sum(dim=1, keepdim=True) > 0
        w = torch.where(keep, filtered, w)
    return w


@torch.no_grad()
def sample_negatives(weights: Tensor, generator: torch.Generator | None = None) -> Tensor:
    """One index per row drawn with probability proportional to `weights` [B, B]."""
    bad = weights.sum(dim=1) <= 0
    if bad.any():
        rows = bad.nonzero().flatten().tolist()
        raise ValueError(f"no candidate negative for rows {rows}: every other pair in the batch is a positive")
    return torch.multinomial(weights, 1, generator=generator).squeeze(1)


@torch.no_grad()
def random_negatives(batch: int, generator: torch.Generator | None = None,
                     device: torch.device | None = None) -> Tensor:
    """Uniform negatives (any other item of the batch): the 'no hard negatives' ablation."""
    offset = torch.randint(1, batch, (batch,), generator=generator, device=device)
    return (torch.arange(batch, device=device) + offset) % batch


def itm_loss(logits: Tensor, num_positive: int) -> tuple[Tensor, Tensor]:
    """Cross-entropy over {no match, match}; the first `num_positive` rows are matches."""
    labels = torch.zeros(logits.shape[0], dtype=torch.long, device=logits.device)
    labels[:num_positive] = 1
    return F.cross_entropy(logits, labels), labels
