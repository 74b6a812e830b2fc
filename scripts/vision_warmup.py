"""Supervised warm-up of the tiny image encoder on ShapesWorld's scene graphs: our analogue of the paper's
ImageNet-trained DeiT. Each training object's shape, colour and size (and with --place its column and row) are read by a
linear head from the mean of the ViT's tokens over its box; the ViT alone is saved, in the layout `model.init_vision`
loads.

    python scripts/vision_warmup.py --out runs/vit_warmup.pth [--data data/shapesworld] [--minutes 10] [key=value ...]
    albef-lab pretrain model.vision.conv_stem=true model.init_vision=runs/vit_warmup.pth train.freeze_vision=true

The overrides are the config's (`model.vision.conv_stem=true` for the encoder docs/itm_recipe.md measured). The last
line printed is JSON: steps, and the held-out (test split) accuracy of each attribute with its majority class.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from tqdm import tqdm

from albef_lab.config import load_config
from albef_lab.data import world as W
from albef_lab.data.formats import read_json
from albef_lab.data.transforms import eval_transform
from albef_lab.eval.inspect import object_features
from albef_lab.inference import read_image
from albef_lab.models.base import eval_mode
from albef_lab.models.checkpoint import save_atomic
from albef_lab.models.vit import VisionTransformer

BINS = 3  # where an object is (--place): the third of the image (column, row) that holds its centre
WHAT = (("shape", W.SHAPES), ("colour", list(W.COLOURS)), ("size", list(W.SIZES)))
WHERE = (("column", list(range(BINS))), ("row", list(range(BINS))))


def attribute(o: W.Obj, name: str):
    """An object's value of one attribute (column and row: where it is, which the captions' relations need)."""
    if name in ("column", "row"):
        lo, hi = (o.box[0], o.box[2]) if name == "column" else (o.box[1], o.box[3])
        return min(int((lo + hi) / 2 * BINS), BINS - 1)
    return getattr(o, name)


def load_split(data: Path, split: str, res: int) -> tuple[torch.Tensor, list]:
    """Every image of a split (normalised as evaluation does) and its scene."""
    entries = [e for e in read_json(data / "scenes.json") if e["split"] == split]
    if not entries:
        raise SystemExit(f"{data / 'scenes.json'} has no {split} images")
    transform = eval_transform(res)
    # read_image names a missing or unreadable file
    images = torch.stack([transform(read_image(data / e["image"]))[0] for e in entries])
    return images, [W.Scene.from_dict(e) for e in entries]


def object_labels(scenes: list, attrs: tuple) -> torch.Tensor:
    """[objects, attributes]: each object's value of each attribute as a class index, objects in scene order."""
    return torch.tensor([[values.index(attribute(o, name)) for name, values in attrs]
                         for sc in scenes for o in sc.objects])


def attribute_logits(head: nn.Linear, feats: torch.Tensor, attrs: tuple) -> list[torch.Tensor]:
    """The head's output split into one logit block per attribute."""
    return list(head(feats).split([len(values) for _, values in attrs], dim=1))


@torch.no_grad()
def held_out_accuracy(vit: nn.Module, head: nn.Linear, images: torch.Tensor, scenes: list,
                      attrs: tuple) -> dict[str, float]:
    with eval_mode(vit):
        feats = torch.cat([object_features(vit(images[i:i + 100]), scenes[i:i + 100])
                           for i in range(0, len(scenes), 100)])
    y, out = object_labels(scenes, attrs), {}
    for k, ((name, _), logits) in enumerate(zip(attrs, attribute_logits(head, feats, attrs), strict=True)):
        out[name] = round(100.0 * (logits.argmax(1) == y[:, k]).float().mean().item(), 1)
        out[name + "_majority"] = round(100.0 * (y[:, k] == y[:, k].mode().values).float().mean().item(), 1)
    return out


def warmup(data: Path, out: Path, minutes: float, max_steps: int, overrides: list[str], place: bool = False,
           progress: bool = True) -> dict:
    cfg = load_config(None, [f"data.root={data}", *overrides], "tiny")
    attrs = WHAT + WHERE if place else WHAT
    t = cfg.train
    torch.manual_seed(t.seed)
    vision = cfg.model.vision
    images, scenes = load_split(data, "train", vision.image_res)
    test_images, test_scenes = load_split(data, "test", vision.image_res)
    vit = VisionTransformer(vision)
    head = nn.Linear(vision.width, sum(len(values) for _, values in attrs))
    opt = torch.optim.AdamW([*vit.parameters(), *head.parameters()], lr=t.lr, weight_decay=t.weight_decay)
    gen = torch.Generator().manual_seed(t.seed)
    start, step = time.perf_counter(), 0

    def budget_left() -> bool:  # --steps, when given, else --minutes
        return step < max_steps if max_steps else time.perf_counter() - start < 60 * minutes

    bar = tqdm(total=max_steps or None, disable=not progress, desc="vision warm-up")
    while budget_left():
        # one batch of training images; every object in it is a labelled example
        idx = torch.randint(0, len(scenes), (t.batch_size,), generator=gen)
        batch = [scenes[i] for i in idx.tolist()]
        feats = object_features(vit(images[idx]), batch)
        y = object_labels(batch, attrs)
        loss = sum(F.cross_entropy(logits, y[:, k]) for k, logits in enumerate(attribute_logits(head, feats, attrs)))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    result = {"steps": step, "minutes": round((time.perf_counter() - start) / 60, 2),
              "held_out": held_out_accuracy(vit, head, test_images, test_scenes, attrs)}
    out.parent.mkdir(parents=True, exist_ok=True)
    save_atomic({"model": vit.state_dict(), "vision": vars(vision), "warmup": result}, out)
    return result


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="where the ViT's weights go (.pth)")
    p.add_argument("--data", default="data/shapesworld", type=Path, help="a ShapesWorld folder (with scenes.json)")
    p.add_argument("--minutes", type=float, default=10.0, help="wall-time budget")
    p.add_argument("--steps", type=int, default=0, help="a number of steps instead of minutes")
    p.add_argument("--place", action="store_true", help="also each object's column and row (measured: worse)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", help="config key=value (the tiny preset's model.vision and train.*)")
    args = p.parse_args(argv)
    result = warmup(args.data, args.out, args.minutes, args.steps, args.overrides, args.place, not args.quiet)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
