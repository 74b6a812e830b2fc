"""Image transforms of the paper: random resized crop, horizontal flip, the original's `RandomAugment(2, 7)`.

The original flips images without touching the caption (`flip_text="ignore"`, the default), so "a dog left of
a cat" becomes false. A flip can instead swap "left" and "right" in the paired texts (`"swap"`), or be skipped
for samples that mention a side (`"skip"`).

Training images take the fast path by default (`resize="torch"`): JPEG files are decoded by libjpeg-turbo through
torchvision, the crop stays a uint8 view, and torch's antialiased bicubic resize on uint8 (PIL's kernel) makes the
`res x res` image; ~1 % of pixels differ from PIL's by a few levels (PIL rounds between its two passes). The crop
box, flip and RandomAugment draws are the original's. `resize="pil"` is the original's PIL path, bit for bit.
Evaluation always resizes with PIL, as the original, so the reported numbers are the original's.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as Fn
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
    """`(image, texts) -> (normalised tensor [3, res, res], texts)` for train or test.

    The image is a PIL image or a uint8 `[3, H, W]` tensor (what `wants_tensor` transforms read files as)."""

    def __init__(self, res: int, train: bool, scale: tuple[float, float] = (0.5, 1.0), randaugment: bool = True,
                 flip: bool = True, flip_text: str = "ignore", fix_autocontrast: bool = False, resize: str = "torch"):
        if flip_text not in ("swap", "skip", "ignore"):
            raise ValueError(f"flip_text must be 'swap', 'skip' or 'ignore', got {flip_text!r}")
        if resize not in ("torch", "pil"):
            raise ValueError(f"resize must be 'torch' or 'pil', got {resize!r}")
        self.res, self.train, self.flip, self.flip_text = res, train, flip, flip_text
        self.crop = RandomResizedCrop(res, scale=scale, interpolation=InterpolationMode.BICUBIC)
        self.randaug = RandomAugment(2, 7, fix_autocontrast=fix_autocontrast) if randaugment else None
        self.wants_tensor = train and resize == "torch"

    def flips(self, texts: list[str]) -> tuple[bool, list[str]]:
        """Whether to mirror the image, and the texts to go with it (one draw, as the original's flip)."""
        if not (self.flip and random.random() < 0.5):
            return False, texts
        if self.flip_text == "swap":
            return True, [swap_left_right(t) for t in texts]
        return self.flip_text == "ignore" or not any(mentions_side(t) for t in texts), texts

    def __call__(self, img, texts: Sequence[str] = ()) -> tuple[torch.Tensor, list[str]]:
        texts = list(texts)
        if not self.train:
            img = img.convert("RGB").resize((self.res, self.res), Image.BICUBIC)
            return TF.normalize(TF.to_tensor(img), MEAN, STD), texts
        if self.wants_tensor:
            return self._train_uint8(as_uint8(img), texts)
        img = self.crop(img.convert("RGB"))
        mirror, texts = self.flips(texts)
        if mirror:
            img = ImageOps.mirror(img)
        if self.randaug is not None:
            img = self.randaug(img)
        return TF.normalize(TF.to_tensor(img), MEAN, STD), texts

    def _train_uint8(self, x: torch.Tensor, texts: list[str]) -> tuple[torch.Tensor, list[str]]:
        top, left, h, w = self.crop.get_params(x, self.crop.scale, self.crop.ratio)
        x = Fn.interpolate(x[None, :, top:top + h, left:left + w], size=(self.res, self.res), mode="bicubic",
                           antialias=True)[0]
        mirror, texts = self.flips(texts)
        if mirror:
            x = x.flip(-1)
        plan = self.randaug.draw() if self.randaug is not None else []
        if any(name != "Identity" for name, _ in plan):  # its ops are numpy / cv2 code on HWC arrays
            hwc = self.randaug.apply(x.permute(1, 2, 0).contiguous().numpy(), plan)
            x = torch.from_numpy(hwc).permute(2, 0, 1)
        return TF.normalize(x.contiguous().float().div_(255), MEAN, STD), texts


def as_uint8(img) -> torch.Tensor:
    """A PIL image or a uint8 `[3, H, W]` tensor as the latter."""
    if isinstance(img, torch.Tensor):
        return img
    return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1)


def pretrain_transform(res: int, **kw) -> ImageTextTransform:
    """Pre-training: random resized crop 0.2-1.0, flip, the original's RandomAugment(2, 7)."""
    return ImageTextTransform(res, train=True, scale=(0.2, 1.0), **kw)


def eval_transform(res: int) -> ImageTextTransform:
    """Evaluation: bicubic resize to res x res."""
    return ImageTextTransform(res, train=False)
