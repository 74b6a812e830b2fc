"""Image transforms of the paper: random resized crop, horizontal flip, the original's `RandomAugment(2, 7)`.

The original flips images without touching the caption (`flip_text="ignore"`, the default), so "a dog left of
a cat" becomes false. A flip can instead swap "left" and "right" in the paired texts (`"swap"`), or be skipped
for samples that mention a side (`"skip"`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

import torch
from PIL import Image, ImageOps
from torchvision.transforms import InterpolationMode, RandomResizedCrop
from torchvision.transforms import functional as TF

from albef_lab.data.randaugment import RandomAugment

MEAN = (0.48145466, 0.4578275, 0.40821073)
STD = (0.26862954, 0.26130258, 0.27577711)

_SIDE = re.compile(r"\b(left|right)\b", flags=re.IGNORECASE)


def swap_left_right(text: str) -> str:
    def repl(m: re.Match) -> str:
        w = m.group(0)
        new = "right" if w.lower() == "left" else "left"
        return new.capitalize() if w[0].isupper() else new
    return _SIDE.sub(repl, text)


def mentions_side(text: str) -> bool:
    return _SIDE.search(text) is not None


class ImageTextTransform:
    """`(PIL image, texts) -> (normalised tensor [3, res, res], texts)` for train or test."""

    def __init__(self, res: int, train: bool, scale: tuple[float, float] = (0.5, 1.0), randaugment: bool = True,
                 flip: bool = True, flip_text: str = "ignore", fix_autocontrast: bool = False):
        if flip_text not in ("swap", "skip", "ignore"):
            raise ValueError(f"flip_text must be 'swap', 'skip' or 'ignore', got {flip_text!r}")
        self.res, self.train, self.flip, self.flip_text = res, train, flip, flip_text
        self.crop = RandomResizedCrop(res, scale=scale, interpolation=InterpolationMode.BICUBIC)
        self.randaug = RandomAugment(2, 7, fix_autocontrast=fix_autocontrast) if randaugment else None

    def __call__(self, img: Image.Image, texts: Sequence[str] = ()) -> tuple[torch.Tensor, list[str]]:
        texts = list(texts)
        img = img.convert("RGB")
        if self.train:
            img = self.crop(img)
            if self.flip and random.random() < 0.5:
                if self.flip_text == "swap":
                    img, texts = ImageOps.mirror(img), [swap_left_right(t) for t in texts]
                elif self.flip_text == "ignore" or not any(mentions_side(t) for t in texts):
                    img = ImageOps.mirror(img)
            if self.randaug is not None:
                img = self.randaug(img)
        else:
            img = img.resize((self.res, self.res), Image.BICUBIC)
        x = TF.normalize(TF.to_tensor(img), MEAN, STD)
        return x, texts


def pretrain_transform(res: int, **kw) -> ImageTextTransform:
    """Pre-training: random resized crop 0.2-1.0, flip, the original's RandomAugment(2, 7)."""
    return ImageTextTransform(res, train=True, scale=(0.2, 1.0), **kw)


def eval_transform(res: int) -> ImageTextTransform:
    """Evaluation: bicubic resize to res x res."""
    return ImageTextTransform(res, train=False)
