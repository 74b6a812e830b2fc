"""Attention Grad-CAM as in the paper: attention map x clamped gradient, averaged over heads (and text tokens).

`itm_gradcam` back-propagates the ITM 'match' logit to a cross-attention layer of the fusion encoder
(per text token, or averaged over the sentence); `itc_gradcam` back-propagates the ITC similarity to
the [CLS] attention of a ViT block. Both return maps on the patch grid [B, H/p, W/p] and work on any
model with the ALBEF API (`encode_image`, `encode_text`, `itm_logits`): pre-training or retrieval.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from albef_lab.models.attention import capture_attention
from albef_lab.models.record import record


def _grid(n_patches: int) -> int:
    side = math.isqrt(n_patches)
    if side * side != n_patches:
        raise ValueError(f"{n_patches} patches are not a square grid")
    return side


def _maps_and_grads(attns: list[nn.Module], score_fn: Callable[[], Tensor]) -> list[tuple[Tensor, Tensor]]:
    """Run `score_fn()` (a scalar) capturing each module's attention probabilities; return them and the score's
    gradient with respect to them, one forward and one backward for all. Per call: nothing is kept on the model
    and no parameter gets a gradient, so requests that share a model do not disturb each other."""
    with torch.enable_grad(), capture_attention(*attns) as captured:
        score = score_fn()
        maps = [captured[a][0] for a in attns]
        grads = torch.autograd.grad(score, maps)
    return [(m.detach(), g) for m, g in zip(maps, grads, strict=True)]


def cross_attention_layers(model: nn.Module) -> list[int]:
    """Indices of the BERT layers that cross-attend to the image (the fusion layers)."""
    return [i for i, layer in enumerate(model.bert.encoder.layer) if layer.has_cross_attention]


def default_itm_layer(model: nn.Module) -> int:
    """The paper's choice, the third fusion layer (block 8 of 12 at base size), where a fusion layer follows it;
    else the last but one. In the last fusion layer only [CLS] reaches the ITM score: its word maps are empty, and
    on the tiny model (2 fusion layers) its sentence map grounds worse (notebook 03's layer sweep)."""
    layers = cross_attention_layers(model)
    return layers[max(0, min(2, len(layers) - 2))]


def itm_gradcam(model: nn.Module, image: Tensor, ids: Tensor, mask: Tensor, layer: int, *,
                per_token: bool = False) -> Tensor:
    """[B, side, side] sentence maps (or [B, L, side, side] per token) from cross-attention layer `layer`."""
    return itm_gradcam_layers(model, image, ids, mask, [layer], per_token=per_token)[layer]


def itm_gradcam_layers(model: nn.Module, image: Tensor, ids: Tensor, mask: Tensor, layers: Sequence[int], *,
                       per_token: bool = False) -> dict[int, Tensor]:
    """`itm_gradcam` of several cross-attention layers from one forward and backward: {layer: maps}."""
    known = cross_attention_layers(model)
    for layer in layers:
        if layer not in known:
            raise ValueError(f"layer {layer} has no cross-attention; choose one of {known}")

    def score() -> Tensor:
        image_states, _ = model.encode_image(image)
        text_states, _ = model.encode_text(ids, mask)
        logits = model.itm_logits(text_states, mask, image_states)
        record(itm_logits=logits)
        return logits[:, 1].sum()

    attns = [model.bert.encoder.layer[layer].crossattention.self for layer in layers]
    out = {}
    for layer, (cam, grad) in zip(layers, _maps_and_grads(attns, score), strict=True):
        b, heads, length, n = cam.shape
        side = _grid(n - 1)
        m = mask.view(b, 1, length, 1, 1).to(cam.dtype)
        cam = cam[..., 1:].reshape(b, heads, length, side, side) * m
        grad = grad[..., 1:].clamp(min=0).reshape(b, heads, length, side, side) * m
        record(attention_map=cam, attn_gradients=grad)
        maps = (cam * grad).mean(1)  # over heads
        out[layer] = maps if per_token else maps.mean(1)  # the original averages over all positions, padding too
    return out


def itc_gradcam(model: nn.Module, image: Tensor, ids: Tensor, mask: Tensor, block: int = -1) -> Tensor:
    """[B, side, side] maps of the ITC similarity on the [CLS] attention of ViT block `block`."""
    return itc_gradcam_blocks(model, image, ids, mask, [block])[block]


def itc_gradcam_blocks(model: nn.Module, image: Tensor, ids: Tensor, mask: Tensor,
                       blocks: Sequence[int]) -> dict[int, Tensor]:
    """`itc_gradcam` of several ViT blocks from one forward and backward: {block: maps}."""
    def score() -> Tensor:
        _, image_feat = model.encode_image(image)
        _, text_feat = model.encode_text(ids, mask)
        sim = image_feat @ text_feat.t() / model.temp
        record(sim=sim)
        return sim.diagonal().sum()

    out = {}
    attns = [model.visual_encoder.blocks[block].attn for block in blocks]
    for block, (cam, grad) in zip(blocks, _maps_and_grads(attns, score), strict=True):
        b, heads, _, n = cam.shape
        side = _grid(n - 1)
        record(cls_attention_map=cam[:, :, 0], cls_attn_gradients=grad[:, :, 0])
        cam = cam[:, :, 0, 1:].reshape(b, heads, side, side)
        grad = grad[:, :, 0, 1:].clamp(min=0).reshape(b, heads, side, side)
        out[block] = (cam * grad).mean(1)
    return out


def gradcam(model: nn.Module, image: Tensor, ids: Tensor, mask: Tensor, mode: str = "itm",
            block: int | None = None) -> Tensor:
    """Sentence maps [B, side, side] in either mode.

    `block`: the cross-attention layer (itm; None or negative = `default_itm_layer`) or the ViT block
    (itc; None = the last, negative counts from the end).
    """
    if mode == "itm":
        layer = default_itm_layer(model) if block is None or block < 0 else block
        return itm_gradcam(model, image, ids, mask, layer)
    if mode == "itc":
        return itc_gradcam(model, image, ids, mask, -1 if block is None else block)
    raise ValueError(f"Grad-CAM mode must be 'itm' or 'itc', got {mode!r}")


def upsample(maps: Tensor, height: int, width: int) -> Tensor:
    """Bicubic resize of [B, s, s] maps to the image size (as the original's proposal scoring)."""
    return F.interpolate(maps[:, None].float(), size=(height, width), mode="bicubic", align_corners=False)[:, 0]
