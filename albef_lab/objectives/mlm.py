"""Masked language modelling: masking draws, the masking rule and the (distilled) loss."""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor


@dataclass
class MaskDraws:
    """The four random draws of one masking, in the order the original makes them."""

    select: Tensor  # bernoulli(p): candidate positions
    replace: Tensor  # bernoulli(0.8): -> [MASK]
    random: Tensor  # bernoulli(0.5): -> random token (among the selected, not replaced)
    random_words: Tensor  # randint(vocab) at every position


def draw_mask(shape: torch.Size | tuple, probability: float, vocab_size: int,
              generator: torch.Generator | None = None, device: torch.device | None = None) -> MaskDraws:
    def bern(p: float) -> Tensor:
        return torch.bernoulli(torch.full(shape, p, device=device), generator=generator)

    select = bern(probability)
    replace = bern(0.8)
    random = bern(0.5)
    words = torch.randint(vocab_size, shape, generator=generator, device=device)
    return MaskDraws(select, replace, random, words)


def apply_mask(input_ids: Tensor, draws: MaskDraws, pad_id: int, cls_id: int,
               mask_id: int) -> tuple[Tensor, Tensor]:
    """Return (masked ids, labels); labels are -100 where nothing was selected.

    [PAD] and [CLS] are never selected; 80 % of the selected become [MASK], 10 % a random token
    from the whole vocabulary, 10 % stay as they are.
    """
    selected = draws.select.bool() & (input_ids != pad_id) & (input_ids != cls_id)
    labels = input_ids.masked_fill(~selected, -100)
    replaced = draws.replace.bool() & selected
    randomised = draws.random.bool() & selected & ~replaced
    ids = input_ids.masked_fill(replaced, mask_id)
    ids = torch.where(randomised, draws.random_words.to(ids.device), ids)
    return ids, labels


def mlm_loss(logits: Tensor, labels: Tensor, soft_labels: Tensor | None = None, alpha: float = 0.0,
             empty_is_zero: bool = False) -> Tensor:
    """(1 - alpha) * CE(labels) + alpha * CE(soft labels), both averaged over the masked positions.

    With nothing masked the original returns NaN; `empty_is_zero` returns 0 (keeping the graph).
    """
    keep = labels != -100
    if empty_is_zero and not keep.any():
        return logits.sum() * 0.0
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]), labels.reshape(-1), ignore_index=-100)
    if soft_labels is None:
        return ce
    distill = -(F.log_softmax(logits, dim=-1) * soft_labels).sum(dim=-1)[keep].mean()
    return (1.0 - alpha) * ce + alpha * distill
