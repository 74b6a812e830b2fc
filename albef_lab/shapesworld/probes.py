"""What the scene graphs let one read off an image encoder: the tokens under each object, their mean, and how much
of [CLS]'s attention falls on objects (the vision warm-up trains on these; scripts/ probe with them)."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from albef_lab.models.attention import capture_attention
from albef_lab.models.base import eval_mode


def patches_under(box: tuple[float, float, float, float], grid: int) -> list[int]:
    """Token indices (after [CLS], row-major) of the patches a box (x0, y0, x1, y1 as fractions of the image)
    overlaps."""
    x0, y0, x1, y1 = (min(int(v * grid), grid - 1) for v in box)
    return [1 + row * grid + col for row in range(y0, y1 + 1) for col in range(x0, x1 + 1)]


def object_tokens(image_states: Tensor, scenes: list) -> tuple[Tensor, Tensor]:
    """Every token under an object's box, and whose it is: ([tokens, width], [tokens] index of the object in
    `object_features`' order). A token under two boxes appears once for each."""
    grid = math.isqrt(image_states.shape[1] - 1)
    rows, cols, owner = [], [], []
    objects = ((i, o) for i, sc in enumerate(scenes) for o in sc.objects)
    for k, (i, o) in enumerate(objects):
        under = patches_under(o.box, grid)
        rows += [i] * len(under)
        cols += under
        owner += [k] * len(under)
    # index_select on the flattened tokens, not image_states[rows, cols]: the backward of advanced indexing adds
    # a token's repeated rows with atomic adds across threads on the CPU, in an order the scheduler decides (a
    # run that shared the CPU ended on other weights); index_select's backward adds them in a fixed order
    device, tokens = image_states.device, image_states.shape[1]
    index = torch.tensor(rows, device=device) * tokens + torch.tensor(cols, device=device)
    return image_states.reshape(-1, image_states.shape[-1]).index_select(0, index), torch.tensor(owner, device=device)


def object_features(image_states: Tensor, scenes: list) -> Tensor:
    """Each object's feature: the mean of the image encoder's output tokens over its box, objects in scene order
    ([objects, width]; differentiable, so a probe or a supervised warm-up can use it)."""
    tokens, owner = object_tokens(image_states, scenes)
    n = sum(len(sc.objects) for sc in scenes)
    sums = tokens.new_zeros(n, tokens.shape[1]).index_add(0, owner, tokens)
    return sums / torch.bincount(owner, minlength=n).unsqueeze(1).to(tokens.dtype)


@torch.no_grad()
def cls_attention_on_objects(vit: nn.Module, images: Tensor, scenes: list, batch: int = 100) -> tuple[list, float]:
    """Per ViT block, the share of [CLS]'s attention (mean over heads and images) on patches under some object;
    and the share of patches under objects (what attention spread evenly would give). ITC reads [CLS], and ITC
    Grad-CAM reads [CLS]'s attention: a block near the even share cannot point at an object."""
    grid = vit.cfg.image_res // vit.cfg.patch_size
    inside = torch.zeros(len(scenes), 1 + grid * grid, device=images.device)
    for i, sc in enumerate(scenes):
        for o in sc.objects:
            inside[i, patches_under(o.box, grid)] = 1.0
    on = torch.zeros(len(vit.blocks))
    with eval_mode(vit), capture_attention(*(blk.attn for blk in vit.blocks)) as captured:
        for a in range(0, len(scenes), batch):
            vit(images[a:a + batch])
            for b, blk in enumerate(vit.blocks):
                cls_row = captured[blk.attn][-1].mean(1)[:, 0]  # [images, tokens]
                on[b] += (cls_row * inside[a:a + batch]).sum().item()
    return [round(100.0 * v / len(scenes), 1) for v in on.tolist()], round(100.0 * inside[:, 1:].mean().item(), 1)


def linear_probe(features: Tensor, labels: Tensor, train: Tensor, ridge: float = 1.0) -> float:
    """Accuracy (%) on the rows outside `train` of a ridge-regression classifier fit on the `train` rows: how much
    of a label the features hold linearly. Features are standardised with the training rows' statistics."""
    mean, std = features[train].mean(0), features[train].std(0).clamp_min(1e-6)
    x = torch.cat([(features - mean) / std, torch.ones(len(features), 1, dtype=features.dtype)], dim=1)
    y = torch.nn.functional.one_hot(labels, int(labels.max()) + 1).to(features.dtype)
    xt = x[train]
    w = torch.linalg.solve(xt.T @ xt + ridge * torch.eye(x.shape[1], dtype=x.dtype), xt.T @ y[train])
    return 100.0 * ((x[~train] @ w).argmax(1) == labels[~train]).float().mean().item()
