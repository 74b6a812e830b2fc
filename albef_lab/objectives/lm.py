"""Answer likelihood of the VQA decoder: next-token NLL summed per sequence, optionally distilled."""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor


def answer_nll(logits: Tensor, targets: Tensor, soft_labels: Tensor | None = None, alpha: float = 0.0) -> Tensor:
    """Per-sequence loss [A]: position t predicts token t+1; -100 targets count 0; sums, not means.

    With teacher `soft_labels` [A, L-1, V]: (1 - alpha) * NLL + alpha * soft cross-entropy (same positions).
    """
    shifted, labels = logits[:, :-1], targets[:, 1:]
    nll = F.cross_entropy(shifted.transpose(1, 2), labels, ignore_index=-100, reduction="none").sum(1)
    if soft_labels is None:
        return nll
    distill = -(F.log_softmax(shifted, dim=-1) * soft_labels).sum(-1)
    distill = (distill * (labels != -100)).sum(1)
    return (1.0 - alpha) * nll + alpha * distill


def token_nll(head: Callable[[Tensor], Tensor], hidden: Tensor, labels: Tensor) -> Tensor:
    """Per-row NLL sums [A] where `hidden[:, t]` predicts `labels[:, t]` (-100: nothing to predict), the
    vocabulary head applied only where a token is predicted: `answer_nll`'s sums for a fraction of the work."""
    keep = labels != -100
    token = F.cross_entropy(head(hidden[keep]), labels[keep], reduction="none")
    rows = keep.nonzero()[:, 0]
    return torch.zeros(hidden.shape[0], dtype=token.dtype, device=hidden.device).index_add(0, rows, token)
