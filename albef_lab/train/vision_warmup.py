"""Supervised warm-up of the image encoder on ShapesWorld's scene graphs: our analogue of the paper's
ImageNet-trained DeiT, made in minutes. A linear head reads each training object's shape, colour and size (with
`place`, also its column and row) from the mean of the ViT's tokens over its box.

Why (docs/itm_recipe.md): trained from scratch by ALBEF's objectives, the tiny ViT never learns shape (a linear
probe reads it at 15-30 %), so the fused half cannot tell a shape edit from its caption; warmed up and kept frozen
through pre-training (the engine does both when `train.vision_warmup_minutes` / `_steps` is set), it shows shape
to the fused half, and ITM re-ranking raises retrieval.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from albef_lab.config import VisionConfig
from albef_lab.data import world as W
from albef_lab.data.datasets import read_rgb
from albef_lab.data.formats import read_json
from albef_lab.data.transforms import eval_transform
from albef_lab.eval.inspect import object_features, object_tokens
from albef_lab.models.base import eval_mode
from albef_lab.models.checkpoint import save_atomic
from albef_lab.models.vit import VisionTransformer

BINS = 3  # where an object is (`place`): the third of the image (column, row) that holds its centre
WHAT = (("shape", W.SHAPES), ("colour", list(W.COLOURS)), ("size", list(W.SIZES)))
WHERE = (("column", list(range(BINS))), ("row", list(range(BINS))))


@dataclass
class WarmupConfig:
    minutes: float  # wall-time budget
    steps: int = 0  # a number of steps instead (0: use `minutes`)
    max_steps: int = 0  # with `minutes`: stop here if the clock has not stopped it first (0: the clock alone)
    lr: float = 1e-3
    weight_decay: float = 0.02
    batch_size: int = 64
    seed: int = 42
    place: bool = False  # also column and row (measured worse: docs/itm_recipe.md)
    tokens: bool = False  # every token under a box names its object (False: the mean of the box's tokens does)
    # every token also names its own column and row: naming objects alone washes position out of the tokens (a
    # linear probe reads a token's column 100 % of the time from a random ViT, 32 % after 600 steps), and without
    # it the fused half cannot tell 'left of' from 'right of'
    positions: bool = False
    progress: bool = True


def attribute(o: W.Obj, name: str):
    """An object's value of one attribute (column and row: where its centre is)."""
    if name in ("column", "row"):
        lo, hi = (o.box[0], o.box[2]) if name == "column" else (o.box[1], o.box[3])
        return min(int((lo + hi) / 2 * BINS), BINS - 1)
    return getattr(o, name)


def load_split(data: str | Path, split: str, res: int) -> tuple[Tensor, list]:
    """Every image of a split (normalised as evaluation does) and its scene graph."""
    data = Path(data)
    if not (data / "scenes.json").is_file():
        raise FileNotFoundError(f"{data / 'scenes.json'} not found: the vision warm-up learns from ShapesWorld's "
                                f"scene graphs (set train.vision_warmup_minutes=0 for other data)")
    entries = [e for e in read_json(data / "scenes.json") if e["split"] == split]
    if not entries:
        raise ValueError(f"{data / 'scenes.json'} has no {split} images")
    transform = eval_transform(res)
    images = torch.stack([transform(read_rgb(data / e["image"]))[0] for e in entries])
    return images, [W.Scene.from_dict(e) for e in entries]


def object_labels(scenes: list, attrs: tuple) -> Tensor:
    """[objects, attributes]: each object's value of each attribute as a class index, objects in scene order."""
    return torch.tensor([[values.index(attribute(o, name)) for name, values in attrs]
                         for sc in scenes for o in sc.objects])


def attribute_logits(head: nn.Linear, feats: Tensor, attrs: tuple) -> list[Tensor]:
    """The head's output split into one logit block per attribute."""
    return list(head(feats).split([len(values) for _, values in attrs], dim=1))


def position_logits(where: nn.Linear, states: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Each patch token's column and row logits and its true column and row ([tokens, grid] x 2, [tokens, 2])."""
    tokens = states[:, 1:]
    grid = math.isqrt(tokens.shape[1])
    cell = torch.arange(grid * grid, device=states.device)
    truth = torch.stack([cell % grid, cell // grid], 1).repeat(len(states), 1)
    logits = where(tokens).reshape(-1, 2 * grid)
    return logits[:, :grid], logits[:, grid:], truth


def position_loss(where: nn.Linear, states: Tensor) -> Tensor:
    column, row, truth = position_logits(where, states)
    return F.cross_entropy(column, truth[:, 0]) + F.cross_entropy(row, truth[:, 1])


@torch.no_grad()
def held_out_accuracy(vit: nn.Module, head: nn.Linear, images: Tensor, scenes: list, attrs: tuple,
                      where: nn.Linear | None = None) -> dict:
    """Accuracy of each attribute on objects of images never trained on, beside its majority class; `_token`:
    read from each single token under the object (what one cross-attention read of a patch sees); with `where`,
    how often a token names its own column and row."""
    with eval_mode(vit):
        states = torch.cat([vit(images[i:i + 100]) for i in range(0, len(scenes), 100)])
    tokens, owner = object_tokens(states, scenes)
    y, out = object_labels(scenes, attrs), {}
    mean_logits = attribute_logits(head, object_features(states, scenes), attrs)
    token_logits = attribute_logits(head, tokens, attrs)
    for k, (name, _) in enumerate(attrs):
        out[name] = round(100.0 * (mean_logits[k].argmax(1) == y[:, k]).float().mean().item(), 1)
        out[name + "_majority"] = round(100.0 * (y[:, k] == y[:, k].mode().values).float().mean().item(), 1)
        out[name + "_token"] = round(100.0 * (token_logits[k].argmax(1) == y[owner, k]).float().mean().item(), 1)
    if where is not None:
        column, row, truth = position_logits(where, states)
        out["token_column"] = round(100.0 * (column.argmax(1) == truth[:, 0]).float().mean().item(), 1)
        out["token_row"] = round(100.0 * (row.argmax(1) == truth[:, 1]).float().mean().item(), 1)
    return out


def warm_up_vision(vit: nn.Module, data: str | Path, cfg: WarmupConfig) -> dict:
    """Train `vit` in place on the training split's objects; returns steps, time taken and held-out accuracies."""
    attrs = WHAT + WHERE if cfg.place else WHAT
    device = next(vit.parameters()).device
    images, scenes = load_split(data, "train", vit.cfg.image_res)
    test_images, test_scenes = load_split(data, "test", vit.cfg.image_res)
    images, test_images = images.to(device), test_images.to(device)
    with torch.random.fork_rng(devices=[]):  # the caller's RNG stream stays as it was
        torch.manual_seed(cfg.seed)
        head = nn.Linear(vit.cfg.width, sum(len(values) for _, values in attrs)).to(device)
        grid = vit.cfg.image_res // vit.cfg.patch_size
        where = nn.Linear(vit.cfg.width, 2 * grid).to(device) if cfg.positions else None
    heads = [*head.parameters(), *(where.parameters() if where is not None else [])]
    opt = torch.optim.AdamW([*vit.parameters(), *heads], lr=cfg.lr, weight_decay=cfg.weight_decay)
    gen = torch.Generator().manual_seed(cfg.seed)
    start, step = time.perf_counter(), 0

    def budget_left() -> bool:  # `steps`, when given, else `minutes` (and `max_steps`, if that comes first)
        if cfg.steps:
            return step < cfg.steps
        return time.perf_counter() - start < 60 * cfg.minutes and not (cfg.max_steps and step >= cfg.max_steps)

    bar = tqdm(total=cfg.steps or cfg.max_steps or None, disable=not cfg.progress, desc="vision warm-up", unit="step")
    vit.train()
    while budget_left():
        # one batch of training images; every object in it is a labelled example
        idx = torch.randint(0, len(scenes), (cfg.batch_size,), generator=gen)
        batch = [scenes[i] for i in idx.tolist()]
        states, y = vit(images[idx.to(device)]), object_labels(batch, attrs).to(device)
        if cfg.tokens:
            feats, owner = object_tokens(states, batch)
            y = y[owner]
        else:
            feats = object_features(states, batch)
        loss = sum(F.cross_entropy(logits, y[:, k]) for k, logits in enumerate(attribute_logits(head, feats, attrs)))
        if where is not None:
            loss = loss + position_loss(where, states)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    seconds = time.perf_counter() - start
    return {"steps": step, "seconds": seconds, "minutes": round(seconds / 60, 2),
            "held_out": held_out_accuracy(vit, head, test_images, test_scenes, attrs, where)}


def warm_up_to_file(vision: VisionConfig, data: str | Path, out: str | Path, cfg: WarmupConfig) -> dict:
    """A fresh ViT (seeded by `cfg.seed`) warmed up and written atomically in the layout `model.init_vision`
    loads, so that one warm-up serves many pre-trainings (the ablation sweep's, `scripts/vision_warmup.py`)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        vit = VisionTransformer(vision)
    result = warm_up_vision(vit, data, cfg)
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    save_atomic({"model": vit.state_dict(), "vision": vars(vision), "warmup": result}, out)
    return result
