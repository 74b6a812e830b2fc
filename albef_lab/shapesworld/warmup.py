"""Supervised warm-up of the image encoder on ShapesWorld's scene graphs: our analogue of the paper's
ImageNet-trained DeiT, made in minutes. A linear head reads each training object's shape, colour and size (with
`place`, also its column and row) from the mean of the ViT's tokens over its box.

Why (docs/itm_recipe.md): trained from scratch by ALBEF's objectives, the tiny ViT never learns shape, so the
fused half cannot tell a shape edit from its caption; warmed up and kept frozen through pre-training (the stage
`VisionWarmup`, with `shapesworld.warmup_minutes` / `_steps`), it shows shape to the fused half.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, replace
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from albef_lab.config import TrainConfig, VisionConfig
from albef_lab.data.datasets import read_rgb
from albef_lab.data.formats import read_json
from albef_lab.data.transforms import eval_transform
from albef_lab.models.base import eval_mode
from albef_lab.models.checkpoint import save_atomic
from albef_lab.models.vit import VisionTransformer
from albef_lab.shapesworld import world as W
from albef_lab.shapesworld.probes import cls_attention_on_objects, object_features, object_tokens

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
    # [CLS] also names which (colour, shape) pairs, shapes and colours the image holds. Otherwise nothing in the
    # warm-up asks [CLS] for anything, so nothing teaches it where to look, and the frozen encoder hands ITC (which
    # reads [CLS]) and ITC Grad-CAM (which reads [CLS]'s attention) a near-even average. Off in the tiny recipe:
    # it doubles ITC and fixes ITC Grad-CAM, but costs ITM re-ranking and the hardest negatives (docs/itm_recipe.md)
    summary: bool = False
    progress: bool = True


def warmup_config(sw, t: TrainConfig, **overrides) -> WarmupConfig:
    """The warm-up a run asks for (`shapesworld.warmup_*`, and the run's lr, batch and seed)."""
    cfg = WarmupConfig(minutes=sw.warmup_minutes, steps=sw.warmup_steps, max_steps=sw.warmup_max_steps, lr=t.lr,
                       weight_decay=t.weight_decay, batch_size=t.batch_size, seed=t.seed, tokens=sw.warmup_tokens,
                       positions=sw.warmup_positions, summary=sw.warmup_summary, progress=t.progress)
    return replace(cfg, **overrides)


class VisionWarmup:
    """The stage: on a fresh pre-training, the image encoder learns ShapesWorld's objects before ALBEF starts
    (every rank the same way); its minutes count against `train.max_minutes`, and it stays frozen after."""

    name, before, kept_minutes = "vision_warmup", True, 0.0

    def __init__(self, cfg: WarmupConfig, data: str | Path):
        self.cfg, self.data = cfg, data
        self.asked = 0 if cfg.steps else cfg.max_steps  # a clock may cut a run by minutes short of these

    def run(self, trainer, seconds_left: float | None) -> dict:
        t, kept = trainer.cfg.train, trainer.kept_minutes()  # the stages after training share the same budget
        if t.max_minutes and not self.cfg.steps and self.cfg.minutes + kept >= t.max_minutes:
            also = f" with {kept:g} minutes kept for the stages after training" if kept else ""
            raise ValueError(f"shapesworld.warmup_minutes={self.cfg.minutes:g}{also} leaves nothing of "
                             f"train.max_minutes={t.max_minutes:g} for pre-training: raise max_minutes, or lower the "
                             f"warm-up (0 = none)")
        record = warm_up_vision(trainer.model.visual_encoder, self.data,
                                replace(self.cfg, progress=self.cfg.progress and trainer.main))
        trainer.model.copy_params()  # the momentum copies start from the warmed-up encoder
        if trainer.main:
            print(f"vision warm-up: {record['steps']} steps in {record['minutes']} minutes; held-out "
                  f"{record['held_out']}")
        return {**record, "asked": self.asked or record["steps"]}

    def every_step(self) -> str:
        return f"shapesworld.warmup_steps={self.asked}" if self.asked else ""


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
                                f"scene graphs (set shapesworld.warmup_minutes=0 for other data)")
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


def summary_labels(scenes: list) -> Tensor:
    """[images, pairs + shapes + colours] multi-hot: which (colour, shape) pairs, shapes and colours each holds."""
    colours, pairs = list(W.COLOURS), len(W.COLOURS) * len(W.SHAPES)
    y = torch.zeros(len(scenes), pairs + len(W.SHAPES) + len(colours))
    for i, sc in enumerate(scenes):
        for o in sc.objects:
            c, s = colours.index(o.colour), W.SHAPES.index(o.shape)
            y[i, [c * len(W.SHAPES) + s, pairs + s, pairs + len(W.SHAPES) + c]] = 1.0
    return y


def summary_loss(head: nn.Linear, states: Tensor, scenes: list) -> Tensor:
    return F.binary_cross_entropy_with_logits(head(states[:, 0]), summary_labels(scenes).to(states.device))


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
                      where: nn.Linear | None = None, summary: nn.Linear | None = None) -> dict:
    """Accuracy of each attribute on objects of images never trained on, beside its majority class; `_token`:
    read from each single token under the object (what one cross-attention read of a patch sees); with `where`,
    how often a token names its own column and row; with `summary`, how often [CLS] names an image's set of
    (colour, shape) pairs exactly."""
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
    if summary is not None:
        pairs = len(W.COLOURS) * len(W.SHAPES)
        said, truth = summary(states[:, 0])[:, :pairs] > 0, (summary_labels(scenes)[:, :pairs] > 0).to(states.device)
        out["cls_pairs_exact"] = round(100.0 * (said == truth).all(1).float().mean().item(), 1)
        sets = [tuple(row) for row in truth.int().tolist()]
        out["cls_pairs_exact_majority"] = round(100.0 * max(map(sets.count, set(sets))) / len(sets), 1)
    out["cls_on_objects"], out["objects_share"] = cls_attention_on_objects(vit, images, scenes)
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
        n_summary = len(W.COLOURS) * len(W.SHAPES) + len(W.SHAPES) + len(W.COLOURS)
        summary = nn.Linear(vit.cfg.width, n_summary).to(device) if cfg.summary else None
    heads = [p for h in (head, where, summary) if h is not None for p in h.parameters()]
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
        if summary is not None:
            loss = loss + summary_loss(summary, states, batch)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        step += 1
        bar.update(1)
        bar.set_postfix(loss=f"{loss.item():.3f}")
    bar.close()
    seconds = time.perf_counter() - start
    return {"steps": step, "seconds": seconds, "minutes": round(seconds / 60, 2),
            "held_out": held_out_accuracy(vit, head, test_images, test_scenes, attrs, where, summary)}


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
