"""Image transforms of the paper, with a horizontal flip that keeps the text true.

The original flips images without touching the caption, so "a dog left of a cat" becomes false.
Here a flip swaps "left" and "right" in the paired texts (`flip_text="swap"`), or is skipped for
samples that mention a side (`"skip"`), or behaves as the original (`"ignore"`).
"""

from __future__ import annotations

import random
import re
from collections.abc import Callable, Sequence

import torch
from PIL import Image, ImageEnhance, ImageOps
from torchvision.transforms import InterpolationMode, RandomResizedCrop
from torchvision.transforms import functional as TF

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


# --- RandAugment with the paper's op list (level in 0..10) --------------------------------------

def _sign(x: float) -> float:
    return x if random.random() < 0.5 else -x


def _shear(img: Image.Image, v: float, axis: int) -> Image.Image:
    m = (1, v, 0, 0, 1, 0) if axis == 0 else (1, 0, 0, v, 1, 0)
    return img.transform(img.size, Image.AFFINE, m, resample=Image.BICUBIC, fillcolor=(128, 128, 128))


def _translate(img: Image.Image, v: float, axis: int) -> Image.Image:
    dx = v * img.size[0]
    m = (1, 0, dx, 0, 1, 0) if axis == 0 else (1, 0, 0, 0, 1, dx)
    return img.transform(img.size, Image.AFFINE, m, resample=Image.BICUBIC, fillcolor=(128, 128, 128))


RANDAUG_OPS: dict[str, Callable[[Image.Image, float], Image.Image]] = {
    "Identity": lambda img, lv: img,
    "AutoContrast": lambda img, lv: ImageOps.autocontrast(img),
    "Equalize": lambda img, lv: ImageOps.equalize(img),
    "Brightness": lambda img, lv: ImageEnhance.Brightness(img).enhance(1 + _sign(lv / 10 * 0.9)),
    "Sharpness": lambda img, lv: ImageEnhance.Sharpness(img).enhance(1 + _sign(lv / 10 * 0.9)),
    "ShearX": lambda img, lv: _shear(img, _sign(lv / 10 * 0.3), 0),
    "ShearY": lambda img, lv: _shear(img, _sign(lv / 10 * 0.3), 1),
    "TranslateX": lambda img, lv: _translate(img, _sign(lv / 10 * 0.45), 0),
    "TranslateY": lambda img, lv: _translate(img, _sign(lv / 10 * 0.45), 1),
    "Rotate": lambda img, lv: img.rotate(_sign(lv / 10 * 30), resample=Image.BICUBIC, fillcolor=(128, 128, 128)),
}


class RandAugment:
    """N ops drawn from the paper's list, each applied with probability 0.5 at magnitude M."""

    def __init__(self, n: int = 2, magnitude: int = 7, ops: Sequence[str] = tuple(RANDAUG_OPS)):
        unknown = set(ops) - set(RANDAUG_OPS)
        if unknown:
            raise ValueError(f"unknown RandAugment ops {sorted(unknown)}; known: {sorted(RANDAUG_OPS)}")
        self.n, self.magnitude, self.ops = n, magnitude, list(ops)

    def __call__(self, img: Image.Image) -> Image.Image:
        for name in random.choices(self.ops, k=self.n):
            if random.random() < 0.5:
                img = RANDAUG_OPS[name](img, self.magnitude)
        return img


class ImageTextTransform:
    """`(PIL image, texts) -> (normalised tensor [3, res, res], texts)` for train or test."""

    def __init__(self, res: int, train: bool, scale: tuple[float, float] = (0.5, 1.0), randaugment: bool = True,
                 flip: bool = True, flip_text: str = "swap"):
        if flip_text not in ("swap", "skip", "ignore"):
            raise ValueError(f"flip_text must be 'swap', 'skip' or 'ignore', got {flip_text!r}")
        self.res, self.train, self.flip, self.flip_text = res, train, flip, flip_text
        self.crop = RandomResizedCrop(res, scale=scale, interpolation=InterpolationMode.BICUBIC)
        self.randaug = RandAugment() if randaugment else None

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
    """Pre-training: random resized crop 0.2-1.0, flip, RandAugment(2, 7)."""
    return ImageTextTransform(res, train=True, scale=(0.2, 1.0), **kw)


def finetune_transform(res: int, **kw) -> ImageTextTransform:
    """Fine-tuning: random resized crop 0.5-1.0, flip, RandAugment(2, 7)."""
    return ImageTextTransform(res, train=True, scale=(0.5, 1.0), **kw)


def eval_transform(res: int) -> ImageTextTransform:
    """Evaluation: bicubic resize to res x res."""
    return ImageTextTransform(res, train=False)
