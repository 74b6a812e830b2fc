"""Scaled dot-product attention shared by the ViT and BERT modules.

Fused SDPA by default. Inside `capture_attention(modules)` those modules take the explicit path and hand their
attention probabilities (part of the graph, so Grad-CAM can differentiate them) to the caller's capture. The
capture lives in a context variable, not on the modules: each thread, and each request of a server, sees
only its own.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

_CAPTURE: ContextVar[dict[nn.Module, list[Tensor]] | None] = ContextVar("albef_attention_capture", default=None)


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
    capture = _CAPTURE.get()
    if capture is None or module not in capture:
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=dropout_p)
    scores = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if mask is not None:
        scores = scores + mask
    probs = scores.softmax(dim=-1)
    capture[module].append(probs)
    return F.dropout(probs, dropout_p, training=dropout_p > 0) @ v


def attention_modules(model: nn.Module) -> list[nn.Module]:
    """Every module of `model` that attends (ViT and BERT attention)."""
    return [m for m in model.modules() if getattr(m, "attends", False)]


@contextmanager
def capture_attention(*modules: nn.Module) -> Iterator[dict[nn.Module, list[Tensor]]]:
    """{module: its attention probabilities [B, heads, N, M], one per call} for the forwards run in the block."""
    capture = {m: [] for m in modules}
    token = _CAPTURE.set({**(_CAPTURE.get() or {}), **capture})
    try:
        yield capture
    finally:
        _CAPTURE.reset(token)


def capturing(module: nn.Module) -> bool:
    """Does the current capture hold any attention module inside `module` (which then needs every position)?"""
    capture = _CAPTURE.get()
    return capture is not None and any(m in capture for m in module.modules())
