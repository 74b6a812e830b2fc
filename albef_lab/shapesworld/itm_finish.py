"""ITM's last lesson on ShapesWorld: the fused half alone, against negatives mined over the whole training split.

Pre-training mines ITM's hard negatives inside a batch of 64. The hardest negatives that retrieval puts in front
of the fused half come from every caption there is, and at the end of the tiny recipe's pre-training it still
accepts about half of the most ITC-similar false captions (docs/itm_recipe.md). This step trains ITM alone for
a few hundred steps on each training image's most ITC-similar captions that its scene graph says are false, plus a
share of random false captions. Only the fusion layers and the ITM head learn: the image encoder, the text-mode
layers and the projections (everything ITC reads) stay as they were, so ITC retrieval does not move.
The stage `ITMFinish` (`shapesworld.itm_finish_*`); off everywhere but the tiny preset: the original has no such
step.
"""

from __future__ import annotations

import random
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from albef_lab.data.datasets import PretrainDataset, read_rgb
from albef_lab.data.formats import pre_caption
from albef_lab.data.tokenizer import Tokenizer
from albef_lab.data.transforms import eval_transform
from albef_lab.eval.retrieval import encode_images, encode_texts
from albef_lab.models.base import eval_mode
from albef_lab.shapesworld import world as W


@dataclass
class FinishConfig:
    steps: int
    mined: int = 8  # each image's negatives: its `mined` most ITC-similar captions that are false of it
    random_share: float = 0.5  # the share of negatives that are instead a random caption false of the image
    lr: float = 1e-4
    weight_decay: float = 0.02
    batch_size: int = 64
    seed: int = 42
    max_seconds: float = 0.0  # stop early when this much time has passed (0: run every step)
    progress: bool = True


@dataclass
class Split:
    """The training split, encoded once (nothing the encoders compute changes in this step)."""

    image_states: Tensor  # [N, tokens, D]
    captions: list[list[int]]  # per image: indices of its own captions in `texts`
    texts: list[str]
    text_states: Tensor  # [T, L, D]
    text_atts: Tensor  # [T, L]
    negatives: list[list[int]]  # per image: its mined negatives (indices in `texts`)
    scenes: list  # per image: its scene graph (what decides that a caption is false of it)


def fused_parameters(model: nn.Module) -> list[tuple[str, nn.Parameter]]:
    """The fusion layers and the ITM head: what this step trains (no momentum copies)."""
    fused = tuple(f"text_encoder.bert.encoder.layer.{i}." for i in range(model.cfg.text.fusion_layer,
                                                                            model.cfg.text.num_hidden_layers))
    return [(n, p) for n, p in model.named_parameters() if n.startswith((*fused, "itm_head."))]


@torch.no_grad()
def encode_training_split(model: nn.Module, tok: Tokenizer, dataset: PretrainDataset, scenes: list, k: int,
                 max_tokens: int, batch: int = 256) -> Split:
    """Encode the training split as pre-training reads it (`pre_caption`'d captions, the task's scene of each
    image index); mine each image's `k` most ITC-similar false captions."""
    captions: list[list[str]] = [[] for _ in dataset.image_files]
    for e, i in zip(dataset.entries, dataset.image_index, strict=True):
        caps = e["caption"] if isinstance(e["caption"], list) else [e["caption"]]
        captions[i].extend(pre_caption(c, dataset.max_words) for c in caps)
    texts = sorted({c for caps in captions for c in caps})
    index = {t: i for i, t in enumerate(texts)}
    tf = eval_transform(model.cfg.vision.image_res)
    device = next(model.parameters()).device
    files = dataset.image_files
    batches = ((torch.stack([tf(read_rgb(dataset.root / f))[0] for f in files[a:a + batch]]),)
               for a in range(0, len(files), batch))  # read as they are encoded
    with eval_mode(model):
        image_states, image_feat = encode_images(model, batches, device)
        text_states, text_atts, text_feat = encode_texts(model, tok, texts, device, batch, max_tokens)
    negatives = mine_false(image_feat @ text_feat.t(), scenes, texts, k, depth=32 * k)  # room for true ones
    return Split(image_states, [[index[c] for c in caps] for caps in captions], texts, text_states, text_atts,
                 negatives, scenes)


def mine_false(sims: Tensor, scenes: list, texts: list[str], k: int, depth: int | None = None) -> list[list[int]]:
    """Per image (row of `sims` [images, texts]), the indices of its `k` most similar texts that its scene graph
    says are false, in order; looked for among its `depth` most similar (None: all)."""
    order = sims.argsort(dim=1, descending=True)[:, :depth].cpu()
    negatives = []
    for i, sc in enumerate(scenes):  # walk down the ranking; the scene graph rules out the true captions
        false = []
        for t in order[i].tolist():
            if len(false) == k:
                break
            if not W.caption_holds(sc, texts[t]):
                false.append(t)
        negatives.append(false)
    return negatives


def draw_batch(split: Split, cfg: FinishConfig, rng: random.Random) -> tuple[Tensor, Tensor, Tensor]:
    """(image rows [2B], text rows [2B], labels [2B]): each image with one own caption (1) and one negative (0)."""
    images = rng.sample(range(len(split.captions)), min(cfg.batch_size, len(split.captions)))
    pos = [rng.choice(split.captions[i]) for i in images]
    neg = []
    for i in images:
        drawn = None
        if rng.random() < cfg.random_share:  # a random caption, if one of a few draws is false of the image
            drawn = next((t for t in (rng.randrange(len(split.texts)) for _ in range(20))
                          if not W.caption_holds(split.scenes[i], split.texts[t])), None)
        neg.append(drawn if drawn is not None else rng.choice(split.negatives[i]))
    rows = torch.tensor(images + images)
    labels = torch.cat([torch.ones(len(images)), torch.zeros(len(images))]).long()
    return rows, torch.tensor(pos + neg), labels


def train_itm_alone(model: nn.Module, tok: Tokenizer, dataset: PretrainDataset, scenes: list, cfg: FinishConfig,
                    max_tokens: int = 30) -> dict:
    """Train the fused half in place (ITM only) on pre-training's own split (`scenes`: each image index's scene
    graph); returns steps, time, and the mean loss of the first and last 50 steps."""
    start = time.perf_counter()
    split = encode_training_split(model, tok, dataset, scenes, cfg.mined, max_tokens)
    params = fused_parameters(model)
    trained = {id(p) for _, p in params}
    frozen = [p for p in model.parameters() if id(p) not in trained and p.requires_grad]
    for p in frozen:
        p.requires_grad_(False)
    opt = torch.optim.AdamW([p for _, p in params], lr=cfg.lr, weight_decay=cfg.weight_decay)
    rng, losses, step = random.Random(cfg.seed), [], 0
    bar = tqdm(total=cfg.steps, disable=not cfg.progress, desc="ITM on mined negatives", unit="step")
    model.train()
    try:
        while step < cfg.steps and not (cfg.max_seconds and time.perf_counter() - start > cfg.max_seconds):
            # one batch: each image with an own caption and a negative, through the fusion layers
            rows, texts, labels = draw_batch(split, cfg, rng)
            device = split.image_states.device
            logits = model.itm_logits(split.text_states[texts.to(device)], split.text_atts[texts.to(device)],
                                      split.image_states[rows.to(device)])
            loss = F.cross_entropy(logits, labels.to(device))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            step += 1
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
    finally:
        bar.close()
        for p in frozen:
            p.requires_grad_(True)
    seconds = time.perf_counter() - start
    return {"steps": step, "seconds": round(seconds, 1), "minutes": round(seconds / 60, 2),
            "loss_first50": round(sum(losses[:50]) / max(1, len(losses[:50])), 4),
            "loss_last50": round(sum(losses[-50:]) / max(1, len(losses[-50:])), 4),
            "mined_per_image": round(sum(map(len, split.negatives)) / len(split.negatives), 2)}


class ITMFinish:
    """The stage: after pre-training, `train_itm_alone` on rank 0 (the others take its weights), with the minutes
    the main loop kept for it (`shapesworld.itm_finish_minutes`) and whatever else is left of the clock."""

    name, before, old_flag = "itm_finish", False, "itm_finished"

    def __init__(self, cfg: FinishConfig, kept_minutes: float):
        self.cfg, self.kept_minutes, self.asked = cfg, kept_minutes, cfg.steps

    def run(self, trainer, seconds_left: float | None) -> dict:
        import torch.distributed as dist

        record = {}
        if trainer.main:
            cfg = FinishConfig(**{**vars(self.cfg), "max_seconds": max(seconds_left or 0.0, 0.0)})
            record = train_itm_alone(trainer.model, trainer.tokenizer, trainer.train_base, trainer.task.scenes, cfg,
                                     trainer.cfg.data.max_tokens)
            trainer.bar.write(f"ITM on mined negatives: {record['steps']} steps in {record['minutes']} minutes, "
                              f"loss {record['loss_last50']:.3f}")
        if trainer.world > 1:
            for p in trainer.model.parameters():
                dist.broadcast(p.data, 0)
        return {**record, "asked": self.asked}

    def every_step(self) -> str:
        return ""  # the minutes kept for it decide: train.max_minutes=0 gives it every step
