"""Scaled dot-product attention shared by the ViT and BERT modules.

Fused SDPA by default; a module with `keep_attention = True` takes the explicit path, which keeps
the attention probabilities (and their gradient, for Grad-CAM) on the module.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor


def split_heads(x: Tensor, num_heads: int) -> Tensor:
    b, n, d = x.shape
    return x.view(b, n, num_heads, d // num_heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    b, h, n, d = x.shape
    return x.transpose(1, 2).reshape(b, n, h * d)


def attend(module: torch.nn.Module, q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None,
           dropout_p: float) -> Tensor:
    """softmax(q k^T / sqrt(d) + mask) v over [B, heads, N, d] tensors; `mask` is additive."""
    if mask is not None and mask.dtype != q.dtype:
        mask = mask.to(q.dtype)
    if not getattr(module, "keep_attention", False):
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores + mask
    probs = scores.softmax(dim=-1)
    if probs.requires_grad:
        probs.retain_grad()
    module.attention_map = probs
    return F.dropout(probs, dropout_p, training=dropout_p > 0) @ v


def set_keep_attention(model: torch.nn.Module, keep: bool = True) -> None:
    """Switch every attention module of `model` to the explicit path (keep=True) or back to SDPA."""
    for m in model.modules():
        if hasattr(m, "keep_attention"):
            m.keep_attention = keep
            if not keep:
                m.attention_map = None
