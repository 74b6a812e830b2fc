"""Heat maps drawn over images the way the paper's figures are: normalised, smoothed, colour-mapped, blended."""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter
from torch import Tensor


def normalise(heat: Tensor) -> Tensor:
    """Min-max to [0, 1]; a constant map becomes all zeros (nothing to show), never NaN."""
    heat = heat.detach().float()
    lo, hi = heat.min(), heat.max()
    return (heat - lo) / (hi - lo) if hi > lo else torch.zeros_like(heat)


def heat_to_size(heat: Tensor, width: int, height: int, smooth: float = 0.02) -> np.ndarray:
    """[s, s] map -> [height, width] in [0, 1]: bicubic resize, then a light Gaussian blur (radius as a fraction
    of the image's shorter side)."""
    big = F.interpolate(normalise(heat)[None, None], size=(height, width), mode="bicubic", align_corners=False)[0, 0]
    img = Image.fromarray((big.clamp(0, 1).numpy() * 255).astype(np.uint8))
    if smooth > 0:
        img = img.filter(ImageFilter.GaussianBlur(radius=max(1.0, smooth * min(width, height))))
    return np.asarray(img, dtype=np.float32) / 255.0


def overlay(image: Image.Image, heat: Tensor, alpha: float = 0.5, smooth: float = 0.02) -> Image.Image:
    """The image with the jet-coloured map blended on top (alpha = weight of the map)."""
    from matplotlib import colormaps

    image = image.convert("RGB")
    h = heat_to_size(heat, image.width, image.height, smooth)
    colour = (colormaps["jet"](h)[..., :3] * 255).astype(np.float32)
    base = np.asarray(image, dtype=np.float32)
    return Image.fromarray((alpha * colour + (1 - alpha) * base).clip(0, 255).astype(np.uint8))


def draw_boxes(image: Image.Image, boxes: list[tuple[list[float], str]], width: int = 3,
               scale: int = 1) -> Image.Image:
    """Draw [x, y, w, h] boxes with their colours on a copy of the image, enlarged `scale` times first (so that
    the outlines of a small image do not hide what they frame)."""
    out = image.convert("RGB").resize((image.width * scale, image.height * scale), Image.NEAREST)
    draw = ImageDraw.Draw(out)
    for (x, y, w, h), colour in boxes:
        draw.rectangle([x * scale, y * scale, (x + w) * scale, (y + h) * scale], outline=colour, width=width)
    return out
