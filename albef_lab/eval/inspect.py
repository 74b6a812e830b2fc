"""Looking inside one pre-training step and at a trained model: what the notebooks draw.

Each function runs the model's own API (`encode_image`, `encode_text`, `itm_logits`) and the objectives'
own sampling, so what is drawn is what training does.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from albef_lab.models.attention import capture_attention
from albef_lab.models.base import eval_mode
from albef_lab.objectives.itm import negative_weights, random_negatives, sample_negatives
from albef_lab.objectives.mlm import apply_mask, draw_mask


@torch.no_grad()
def batch_negatives(model: nn.Module, image: Tensor, ids: Tensor, mask: Tensor,
                    generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """One batch's ITC similarity matrix [B, B] (image rows, text columns; / temp) and the ITM hard negatives
    drawn from it as training draws them: `neg_image` [B] for each text, `neg_text` [B] for each image."""
    with eval_mode(model):
        _, image_feat = model.encode_image(image)
        _, text_feat = model.encode_text(ids, mask)
    sim = image_feat @ text_feat.t() / model.temp
    return {"sim": sim, "neg_image": sample_negatives(negative_weights(sim.t()), generator),
            "neg_text": sample_negatives(negative_weights(sim), generator)}


def mlm_example(ids: Tensor, model: nn.Module, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(masked ids, labels: -100 where the token was not chosen) for a batch of token ids, as MLM masks them."""
    cfg = model.cfg
    draws = draw_mask(ids.shape, cfg.mlm_probability, cfg.text.vocab_size, generator, ids.device)
    return apply_mask(ids, draws, cfg.text.pad_token_id, cfg.cls_token_id, cfg.mask_token_id)


@torch.no_grad()
def itm_scores(model: nn.Module, image: Tensor, ids: Tensor, mask: Tensor,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """ITM match probabilities of a batch of matching pairs: 'positive' (each image with its own text),
    'hard_negative' (with the text ITC ranks most similar among the others, what training mines) and
    'random_negative' (with another text of the batch). Each [B]."""
    with eval_mode(model):
        image_states, image_feat = model.encode_image(image)
        text_states, text_feat = model.encode_text(ids, mask)
        sim = image_feat @ text_feat.t()
        hard = sim.masked_fill(torch.eye(len(sim), dtype=torch.bool, device=sim.device), -torch.inf).argmax(1)
        rand = random_negatives(len(sim), generator, sim.device)

        def prob(text_index: Tensor) -> Tensor:
            logits = model.itm_logits(text_states[text_index], mask[text_index], image_states)
            return logits.softmax(-1)[:, 1]

        return {"positive": prob(torch.arange(len(sim), device=sim.device)), "hard_negative": prob(hard),
                "random_negative": prob(rand)}


def linear_probe(features: Tensor, labels: Tensor, train: Tensor, ridge: float = 1.0) -> float:
    """Accuracy (%) on the rows outside `train` of a ridge-regression classifier fit on the `train` rows: how much
    of a label the features hold linearly. Features are standardised with the training rows' statistics."""
    mean, std = features[train].mean(0), features[train].std(0).clamp_min(1e-6)
    x = torch.cat([(features - mean) / std, torch.ones(len(features), 1, dtype=features.dtype)], dim=1)
    y = torch.nn.functional.one_hot(labels, int(labels.max()) + 1).to(features.dtype)
    xt = x[train]
    w = torch.linalg.solve(xt.T @ xt + ridge * torch.eye(x.shape[1], dtype=x.dtype), xt.T @ y[train])
    return 100.0 * ((x[~train] @ w).argmax(1) == labels[~train]).float().mean().item()


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
