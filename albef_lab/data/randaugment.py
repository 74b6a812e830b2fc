"""The original's pre-training augmentation, `RandomAugment(2, 7)`: its own numpy / cv2 ops and magnitudes.

The ALBEF code does not use torchvision's or timm's RandAugment. Its ops work on uint8 HWC arrays, warp with
`cv2.warpAffine` (bilinear, fill 128), translate by pixels (not by a share of the width), and brighten and
sharpen by a fixed factor above 1. Each op here reproduces the original's output bit for bit
(`../shared/reference/fixtures/randaugment.pt`, checked by `albef-lab verify-reference`), including the
AutoContrast fault: the original negates a uint8 minimum, which wraps, so a channel whose minimum is above 0
comes out all white. `fix_autocontrast=True` computes PIL's autocontrast instead.

Random draws come from numpy (the global state by default, as the original), in the original's order:
the op names, then per op a gate and, for signed ops, a sign.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import cv2
import numpy as np

# the pre-training op list of the original's `create_dataset('pretrain')`, in its order
PRETRAIN_OPS = ("Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness", "ShearX", "ShearY",
                "TranslateX", "TranslateY", "Rotate")
MAX_LEVEL = 10
TRANSLATE_PIXELS = 10.0  # a translation at MAX_LEVEL, in pixels whatever the image size
FILL = (128, 128, 128)


def autocontrast(img: np.ndarray, fix: bool = False) -> np.ndarray:
    """Stretch each channel's [min, max] to [0, 255]; without `fix`, as the original: its offset wraps."""
    out = np.empty_like(img)
    for c in range(img.shape[2]):
        ch = img[..., c]
        low, high = int(ch.min()), int(ch.max())
        if high <= low:
            out[..., c] = ch
            continue
        scale = 255 / (high - low)
        offset = -low * scale if fix else ((256 - low) % 256) * scale  # the original negates a uint8
        table = np.arange(256) * scale + offset
        out[..., c] = table.clip(0, 255).astype(np.uint8)[ch]
    return out


def equalize(img: np.ndarray) -> np.ndarray:
    """PIL's equalize per channel (not cv2's), as the original computes it in float32."""
    out = np.empty_like(img)
    for c in range(img.shape[2]):
        ch = img[..., c]
        hist = np.bincount(ch.ravel(), minlength=256).astype(np.float32)
        step = hist[hist != 0][:-1].sum() // 255
        if step == 0:
            out[..., c] = ch
            continue
        shifted = np.concatenate([[step // 2], hist[:-1]]).astype(np.float32)
        out[..., c] = (np.cumsum(shifted) // step).clip(0, 255).astype(np.uint8)[ch]
    return out


def brightness(img: np.ndarray, factor: float) -> np.ndarray:
    table = (np.arange(256, dtype=np.float32) * factor).clip(0, 255).astype(np.uint8)
    return table[img]


def sharpness(img: np.ndarray, factor: float) -> np.ndarray:
    """Blend with a 3x3 smoothing of the image; the border rows and columns stay as they are."""
    kernel = np.ones((3, 3), dtype=np.float32)
    kernel[1, 1] = 5
    kernel /= 13
    smooth = cv2.filter2D(img, -1, kernel)
    if factor == 0.0:
        return smooth
    if factor == 1.0:
        return img
    out = img.astype(np.float32)
    inner = smooth.astype(np.float32)[1:-1, 1:-1]
    out[1:-1, 1:-1] = inner + factor * (out[1:-1, 1:-1] - inner)
    return out.astype(np.uint8)


def warp(img: np.ndarray, matrix: np.ndarray, fill: Sequence[float] = FILL) -> np.ndarray:
    h, w = img.shape[:2]
    return cv2.warpAffine(img, matrix, (w, h), borderValue=tuple(fill), flags=cv2.INTER_LINEAR).astype(np.uint8)


def shear(img: np.ndarray, factor: float, axis: int, fill: Sequence[float] = FILL) -> np.ndarray:
    m = [[1, factor, 0], [0, 1, 0]] if axis == 0 else [[1, 0, 0], [factor, 1, 0]]
    return warp(img, np.float32(m), fill)


def translate(img: np.ndarray, pixels: float, axis: int, fill: Sequence[float] = FILL) -> np.ndarray:
    m = [[1, 0, -pixels], [0, 1, 0]] if axis == 0 else [[1, 0, 0], [0, 1, -pixels]]
    return warp(img, np.float32(m), fill)


def rotate(img: np.ndarray, degrees: float, fill: Sequence[float] = FILL) -> np.ndarray:
    """Counter-clockwise about (W/2, H/2), like PIL."""
    h, w = img.shape[:2]
    return warp(img, cv2.getRotationMatrix2D((w / 2, h / 2), degrees, 1), fill)


# op -> (function of (image, *args), whether its argument is signed, argument at a level)
OPS: dict[str, tuple[Callable[..., np.ndarray], bool, Callable[[float], tuple]]] = {
    "Identity": (lambda img: img, False, lambda level: ()),
    "AutoContrast": (autocontrast, False, lambda level: ()),
    "Equalize": (equalize, False, lambda level: ()),
    "Brightness": (brightness, False, lambda level: ((level / MAX_LEVEL) * 1.8 + 0.1,)),
    "Sharpness": (sharpness, False, lambda level: ((level / MAX_LEVEL) * 1.8 + 0.1,)),
    "ShearX": (lambda img, v: shear(img, v, 0), True, lambda level: ((level / MAX_LEVEL) * 0.3,)),
    "ShearY": (lambda img, v: shear(img, v, 1), True, lambda level: ((level / MAX_LEVEL) * 0.3,)),
    "TranslateX": (lambda img, v: translate(img, v, 0), True,
                   lambda level: ((level / MAX_LEVEL) * TRANSLATE_PIXELS,)),
    "TranslateY": (lambda img, v: translate(img, v, 1), True,
                   lambda level: ((level / MAX_LEVEL) * TRANSLATE_PIXELS,)),
    "Rotate": (rotate, True, lambda level: ((level / MAX_LEVEL) * 30,)),
}


def apply_op(name: str, img: np.ndarray, args: Sequence[float], fix_autocontrast: bool = False) -> np.ndarray:
    """One op with given arguments (what the fixture records per case)."""
    fn = OPS[name][0]
    if name == "AutoContrast":
        return autocontrast(img, fix_autocontrast)
    return fn(img, *args)


def draw_args(name: str, level: float, rng=np.random) -> tuple:
    """The op's arguments at `level`; a signed op draws its sign as the original does (Rotate negates below
    0.5, the others above)."""
    _, signed, at_level = OPS[name]
    args = at_level(level)
    if signed:
        u = rng.random()
        if (u < 0.5) if name == "Rotate" else (u > 0.5):
            args = (-args[0],)
    return args


class RandomAugment:
    """`n` ops drawn with replacement from `ops`; each fires with probability 0.5 at `level` (of 10).

    Takes a PIL image or an HWC uint8 array and returns an HWC uint8 array. `rng`: a numpy RandomState (the
    global one by default); `applied` after a call lists (op, args) in the order they fired.
    """

    def __init__(self, n: int = 2, level: float = 7, ops: Sequence[str] = PRETRAIN_OPS,
                 fix_autocontrast: bool = False):
        unknown = set(ops) - set(OPS)
        if unknown:
            raise ValueError(f"unknown RandomAugment ops {sorted(unknown)}; known: {list(OPS)}")
        self.n, self.level, self.ops, self.fix_autocontrast = n, level, list(ops), fix_autocontrast
        self.applied: list[tuple[str, tuple]] = []

    def draw(self, rng=np.random) -> list[tuple[str, tuple]]:
        """The ops that fire and their arguments, drawn in the original's order (its ops draw nothing)."""
        plan = []
        for name in rng.choice(self.ops, self.n):
            if rng.random() > 0.5:
                continue
            plan.append((str(name), draw_args(str(name), self.level, rng)))
        return plan

    def apply(self, img: np.ndarray, plan: Sequence[tuple[str, tuple]]) -> np.ndarray:
        for name, args in plan:
            img = apply_op(name, img, args, self.fix_autocontrast)
        return img

    def __call__(self, img, rng=np.random) -> np.ndarray:
        self.applied = self.draw(rng)
        return self.apply(np.asarray(img, dtype=np.uint8), self.applied)
