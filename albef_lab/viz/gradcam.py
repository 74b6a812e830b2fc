"""Attention Grad-CAM as in the paper: attention map x clamped gradient, averaged over heads (and text tokens).

`itm_gradcam` back-propagates the ITM 'match' logit to a cross-attention layer of the fusion encoder
(per text token, or averaged over the sentence); `itc_gradcam` back-propagates the ITC similarity to
the [CLS] attention of a ViT block. Both return maps on the patch grid [B, H/p, W/p].
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from albef_lab.eval.retrieval import text_bert


def _grid(n_patches: int) -> int:
    side = math.isqrt(n_patches)
    if side * side != n_patches:
        raise ValueError(f"{n_patches} patches are not a square grid")
    return side


def _map_and_grad(model: nn.Module, attn: nn.Module, score_fn) -> tuple[Tensor, Tensor]:
    """Run `score_fn()` (a scalar) with `attn` keeping its probabilities; return them and their gradient."""
    attn.keep_attention = True
    try:
        with torch.enable_grad():
            score = score_fn()
            model.zero_grad(set_to_none=True)
            score.backward()
        return attn.attention_map.detach(), attn.attention_map.grad.detach()
    finally:
        attn.keep_attention = False
        attn.attention_map = None


def itm_gradcam(model: nn.Module, image: Tensor, ids: Tensor, mask: Tensor, layer: int,
                per_token: bool = False) -> Tensor:
    """[B, side, side] sentence maps (or [B, L, side, side] per token) from cross-attention layer `layer`."""
    bert = text_bert(model)
    if not getattr(bert.encoder.layer[layer], "has_cross_attention", False):
        raise ValueError(f"layer {layer} has no cross-attention (fusion layers start at {bert.cfg.fusion_layer})")
    attn = bert.encoder.layer[layer].crossattention.self

    def score() -> Tensor:
        image_embeds = model.visual_encoder(image)
        ones = torch.ones(image_embeds.shape[:2], dtype=torch.long, device=image.device)
        h = bert(ids, mask, encoder_hidden_states=image_embeds, encoder_attention_mask=ones)
        return model.itm_head(h[:, 0])[:, 1].sum()

    cam, grad = _map_and_grad(model, attn, score)
    b, heads, length, n = cam.shape
    side = _grid(n - 1)
    m = mask.view(b, 1, length, 1, 1).to(cam.dtype)
    cam = cam[..., 1:].reshape(b, heads, length, side, side) * m
    grad = grad[..., 1:].clamp(min=0).reshape(b, heads, length, side, side) * m
    maps = (cam * grad).mean(1)  # over heads
    return maps if per_token else maps.mean(1)  # the original averages over all positions, padding included


def itc_gradcam(model: nn.Module, image: Tensor, ids: Tensor, mask: Tensor, block: int = -1) -> Tensor:
    """[B, side, side] maps of the ITC similarity on the [CLS] attention of ViT block `block`."""
    attn = model.visual_encoder.blocks[block].attn

    def score() -> Tensor:
        image_embeds = model.visual_encoder(image)
        image_feat = F.normalize(model.vision_proj(image_embeds[:, 0]), dim=-1)
        text = text_bert(model)(ids, mask, mode="text")
        text_feat = F.normalize(model.text_proj(text[:, 0]), dim=-1)
        return ((image_feat * text_feat).sum(-1) / model.temp).sum()

    cam, grad = _map_and_grad(model, attn, score)
    b, heads, _, n = cam.shape
    side = _grid(n - 1)
    cam = cam[:, :, 0, 1:].reshape(b, heads, side, side)
    grad = grad[:, :, 0, 1:].clamp(min=0).reshape(b, heads, side, side)
    return (cam * grad).mean(1)


def upsample(maps: Tensor, height: int, width: int) -> Tensor:
    """Bicubic resize of [B, s, s] maps to the image size (as the original's proposal scoring)."""
    return F.interpolate(maps[:, None].float(), size=(height, width), mode="bicubic", align_corners=False)[:, 0]
