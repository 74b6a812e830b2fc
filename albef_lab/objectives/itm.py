"""Image-text matching (ITM): the loss, and the negatives ITM is trained against.

A negative sampler takes the batch's similarities and returns one negative image per text and one negative
text per image. `HardNegatives` is the paper's (drawn in proportion to ITC similarity), `UniformNegatives` the
ablation without hard negatives; a recipe may pass its own (any callable of the same form) to the model.
"""

from __future__ import annotations

from typing import NamedTuple, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor


class Negatives(NamedTuple):
    """One negative image for each text and one negative text for each image of a batch."""

    image: Tensor  # [B] index of the negative image of text b
    text: Tensor  # [B] index of the negative text of image b
    weights_i2t: Tensor | None = None  # the draw's weights, where it had any (the fixtures record them)
    weights_t2i: Tensor | None = None
    stats: dict[str, Tensor] | None = None  # what the sampler measured, logged with the losses


class NegativeSampler(Protocol):
    def __call__(self, sim_i2t: Tensor, sim_t2i: Tensor, same: Tensor | None,
                 generator: torch.Generator | None) -> Negatives: ...


class HardNegatives:
    """The paper's: text b's negative image drawn with probability softmax(sim_t2i[b]) over the batch, image b's
    negative text from softmax(sim_i2t[b]), positives (the pair, or every pair of the same image) left out."""

    def __call__(self, sim_i2t: Tensor, sim_t2i: Tensor, same: Tensor | None,
                 generator: torch.Generator | None) -> Negatives:
        w_t2i, w_i2t = negative_weights(sim_t2i, same), negative_weights(sim_i2t, same)
        return Negatives(sample_negatives(w_t2i, generator), sample_negatives(w_i2t, generator), w_i2t, w_t2i)


class UniformNegatives:
    """Any other item of the batch, uniformly: the ablation without hard negatives."""

    def __call__(self, sim_i2t: Tensor, sim_t2i: Tensor, same: Tensor | None,
                 generator: torch.Generator | None) -> Negatives:
        b, device = sim_i2t.shape[0], sim_i2t.device
        return Negatives(random_negatives(b, generator, device), random_negatives(b, generator, device))


@torch.no_grad()
def negative_weights(sim: Tensor, same: Tensor | None = None) -> Tensor:
    """softmax over the in-batch columns of `sim` [B, >=B], with positives zeroed.

    `same` [B, B] bool marks pairs that must never be negatives (same image id); default: the diagonal.
    Rows are not renormalised (multinomial does that).
    """
    b = sim.shape[0]
    if b < 2:
        raise ValueError("ITM hard negatives need a batch of at least 2 image-text pairs")
    w = F.softmax(sim[:, :b].float(), dim=1)
    if same is None:
        w.fill_diagonal_(0)
    else:
        w = w.masked_fill(same, 0)
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
