"""Image-text contrastive loss (ITC) against momentum features and the feature queues."""

from __future__ import annotations

import torch
from torch import Tensor

from albef_lab.objectives.distill import mix_targets, soft_cross_entropy


def diagonal_targets(batch: int, columns: int, device: torch.device | None = None) -> Tensor:
    """One positive per row at (b, b): the diagonal; queue columns and other batch items are negatives.

    Always float32, as the original builds it.
    """
    t = torch.zeros(batch, columns, device=device)
    t.fill_diagonal_(1)
    return t


def same_image_targets(image_ids: Tensor, image_ids_all: Tensor) -> Tensor:
    """Every column showing the same image (same id) is a positive, weighted equally (retrieval)."""
    pos = (image_ids.view(-1, 1) == image_ids_all.view(1, -1)).float()
    return pos / pos.sum(dim=1, keepdim=True)


def itc_loss(image_feat: Tensor, text_feat: Tensor, image_feat_all: Tensor, text_feat_all: Tensor,
             temp: Tensor, targets: Tensor, sim_i2t_m: Tensor | None = None,
             sim_t2i_m: Tensor | None = None, alpha: float = 0.0) -> dict[str, Tensor]:
    """ITC of online features vs momentum batch features + queue (`*_all` are [E, B + Q]).

    With teacher similarities (`sim_*_m`) the targets are mixed with their softmax (MoD).
    Returns the loss and the tensors a caller may want to inspect.
    """
    if sim_i2t_m is not None:
        targets_i2t = mix_targets(sim_i2t_m, targets, alpha)
        targets_t2i = mix_targets(sim_t2i_m, targets, alpha)
    else:
        targets_i2t = targets_t2i = targets
    sim_i2t = image_feat @ text_feat_all / temp
    sim_t2i = text_feat @ image_feat_all / temp
    loss_i2t = soft_cross_entropy(sim_i2t, targets_i2t).mean()
    loss_t2i = soft_cross_entropy(sim_t2i, targets_t2i).mean()
    return {
        "loss": (loss_i2t + loss_t2i) / 2,
        "loss_i2t": loss_i2t,
        "loss_t2i": loss_t2i,
        "sim_i2t": sim_i2t,
        "sim_t2i": sim_t2i,
        "sim_i2t_targets": targets_i2t,
        "sim_t2i_targets": targets_t2i,
    }


@torch.no_grad()
def enqueue(queue: Tensor, feats: Tensor, ptr: int) -> int:
    """Write `feats` [n, E] into columns ptr..ptr+n-1 of `queue` [E, Q]; return the next pointer."""
    n, size = feats.shape[0], queue.shape[1]
    if size % n:
        raise ValueError(f"queue_size {size} must be a multiple of the global batch size {n}")
    queue[:, ptr: ptr + n] = feats.T.to(queue.dtype)
    return (ptr + n) % size
