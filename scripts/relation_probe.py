"""Can the fused half learn a distinction at all, if it is taught it directly? A focused ITM fine-tune.

    python scripts/relation_probe.py runs/pretrain_tiny/model.pth --kinds direction [--steps 2000] [--train-vision]

Pre-training's ITM sees direction and binding among many other negatives and stays at chance on them
(docs/itm_recipe.md). This script separates "not enough signal in the budget" from "the model cannot": starting
from a pre-trained checkpoint, it trains ITM only, on (true caption, negative) pairs of training images, where the
negative is a one-word edit of the caption that the scene graph says is false (`world.caption_edits`; a kind of
`--kinds` drawn uniformly, then one of its edits), or with probability `--random-share` another image's caption
that is false of this one; and it reports, as it goes, how often ITM scores a test image's own caption above one
fixed edit of each kind. No augmentation (no flip: left stays left). The image encoder stays frozen unless
`--train-vision`. `--save` writes the fine-tuned model for `scripts/itm_diagnosis.py`. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import random
import time
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from albef_lab.data.datasets import read_rgb
from albef_lab.data.formats import PRETRAIN, read_entries
from albef_lab.data.tokenizer import Tokenizer, load_tokenizer
from albef_lab.data.transforms import eval_transform
from albef_lab.eval.retrieval import encode_texts, itm_margin
from albef_lab.models.factory import load_model, save_model
from albef_lab.shapesworld import world as W
from albef_lab.shapesworld.itm_finish import fused_parameters, mine_false
from albef_lab.shapesworld.negatives import train_scenes


class Split(NamedTuple):
    images: Tensor  # [N, 3, res, res], evaluation transform
    scenes: list
    pairs: list[tuple[int, str, dict[str, list[str]]]]  # (image index, true caption, {kind: edits false of it})
    mined: list[list[str]] | None = None  # per image: the captions ITC finds most similar that are false of it


def load_split(data: Path, split_file: str, kinds: list[str], per_image: int, res: int, seed: int) -> Split:
    """Up to `per_image` true captions per image (drawn with the world's own generator) that have edits of `kinds`."""
    files = sorted({e["image"] for e in read_entries(data / split_file, PRETRAIN)})
    scenes = train_scenes(data / "scenes.json", files)
    if scenes is None:
        raise SystemExit(f"{data}/scenes.json does not name every image of {split_file}: this needs ShapesWorld")
    rng, pairs = random.Random(seed), []
    for i, sc in enumerate(scenes):
        kept = 0
        for text in W.captions(sc, rng, 3 * per_image):
            edits = W.caption_edits(text, [sc], kinds)
            if edits and kept < per_image:
                pairs.append((i, text, edits))
                kept += 1
    tf = eval_transform(res)
    images = torch.stack([tf(read_rgb(data / f))[0] for f in files])
    return Split(images, scenes, pairs)


def text_margin(model: nn.Module, tok: Tokenizer, image_states: Tensor, texts: list[str]) -> Tensor:
    """ITM's match-minus-no-match logit for each (row of image states, text)."""
    ids, mask = tok(texts, max_length=30)
    return itm_margin(model, model.encode_text(ids, mask)[0], mask, image_states)


@torch.no_grad()
def held_out(model: nn.Module, tok: Tokenizer, states: Tensor, split: Split, batch: int = 256) -> dict[str, float]:
    """Per kind: % of test pairs whose own caption ITM scores above a fixed edit (the pair's index picks it)."""
    rows = [(p[0], p[1], p[2][k][n % len(p[2][k])], k) for n, p in enumerate(split.pairs) for k in sorted(p[2])]
    above = []
    for a in range(0, len(rows), batch):
        chunk = rows[a:a + batch]
        s = states[torch.tensor([r[0] for r in chunk])]
        own, edit = (text_margin(model, tok, s, [r[j] for r in chunk]) for j in (1, 2))
        above.append(own > edit)
    above = torch.cat(above)
    kinds = [r[3] for r in rows]
    return {k: round(100.0 * above[torch.tensor([x == k for x in kinds])].float().mean().item(), 1)
            for k in sorted(set(kinds))}


@torch.no_grad()
def mine(model: nn.Module, tok: Tokenizer, split: Split, k: int, batch: int = 512) -> Split:
    """Each image's `k` most ITC-similar captions of the split that its scene graph says are false: the negatives
    the held-out hardest-negative accuracy uses, mined over the whole split instead of a batch."""
    texts = sorted({p[1] for p in split.pairs})
    model.eval()
    image_feat = model.encode_image(split.images)[1]
    text_feat = encode_texts(model, tok, texts, image_feat.device, batch)[2]
    mined = mine_false(image_feat @ text_feat.t(), split.scenes, texts, k)
    return split._replace(mined=[[texts[t] for t in row] for row in mined])


def negative(pair: tuple, split: Split, rng: random.Random, random_share: float, mined_share: float = 0.0) -> str:
    """A false caption for the pair's image: one of its mined negatives (with probability `mined_share`), another
    image's caption (`random_share`), else an edit."""
    i, _, edits = pair
    u = rng.random()
    if u < mined_share and split.mined and split.mined[i]:
        return rng.choice(split.mined[i])
    if u - mined_share < random_share:
        for _ in range(20):
            text = rng.choice(split.pairs)[1]
            if not W.caption_holds(split.scenes[i], text):
                return text
    return rng.choice(edits[rng.choice(sorted(edits))])


def fine_tune(model: nn.Module, tok: Tokenizer, train: Split, test: Split, *, steps: int, batch: int, lr: float,
              train_vision: bool, random_share: float, eval_every: int, seed: int,
              mined_share: float = 0.0, fusion_only: bool = False) -> list[dict]:
    """ITM alone on (own caption, negative) pairs; returns the held-out curve. `fusion_only`: train the fusion
    layers and the ITM head, nothing ITC reads."""
    rng = random.Random(seed)
    fused = {n for n, _ in fused_parameters(model)}

    def trains(name: str) -> bool:
        if "_m." in name:  # no momentum copies
            return False
        if fusion_only:
            return name in fused
        return train_vision or not name.startswith("visual_encoder.")

    params = [q for n, q in model.named_parameters() if trains(n)]
    opt = torch.optim.AdamW(params, lr=lr, weight_decay=0.02)
    with torch.no_grad():
        model.eval()
        frozen = None if train_vision else model.encode_image(train.images)[0]
        test_states = model.encode_image(test.images)[0]
    curve, t0 = [{"step": 0, **held_out(model, tok, test_states, test)}], time.time()
    print(curve[-1], flush=True)
    model.train()
    for step in range(1, steps + 1):
        # a batch of pairs: ITM label 1 for the own caption, 0 for its negative
        chosen = rng.sample(train.pairs, batch)
        idx = torch.tensor([p[0] for p in chosen])
        states = frozen[idx] if frozen is not None else model.encode_image(train.images[idx])[0]
        texts = [p[1] for p in chosen] + [negative(p, train, rng, random_share, mined_share) for p in chosen]
        ids, mask = tok(texts, max_length=30)
        logits = model.itm_logits(model.encode_text(ids, mask)[0], mask, torch.cat([states, states]))
        loss = F.cross_entropy(logits, torch.cat([torch.ones(batch), torch.zeros(batch)]).long())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if step % eval_every == 0 or step == steps:
            # held-out: the encoder's current states when it trains
            model.eval()
            if train_vision:
                with torch.no_grad():
                    test_states = model.encode_image(test.images)[0]
            curve.append({"step": step, "loss": round(loss.item(), 4), "minutes": round((time.time() - t0) / 60, 2),
                          **held_out(model, tok, test_states, test)})
            model.train()
            print(curve[-1], flush=True)
    model.eval()
    return curve


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--data", default="data/shapesworld")
    p.add_argument("--kinds", nargs="+", default=["direction"], choices=list(W.EDIT_KIND_NAMES))
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch", type=int, default=64, help="pairs per step (2x as many ITM rows)")
    p.add_argument("--lr", type=float, default=3e-4)
    p.add_argument("--train-vision", action="store_true", help="train the image encoder too (default: frozen)")
    p.add_argument("--random-share", type=float, default=0.0, help="negatives that are other images' captions")
    p.add_argument("--mined-share", type=float, default=0.0,
                   help="negatives drawn from each image's --mined most ITC-similar false captions of the split")
    p.add_argument("--mined", type=int, default=8)
    p.add_argument("--fusion-only", action="store_true", help="train the fusion layers and ITM head only")
    p.add_argument("--eval-every", type=int, default=250)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--save", help="write the fine-tuned model here")
    args = p.parse_args(argv)
    torch.manual_seed(args.seed)
    data = Path(args.data)
    model, mcfg, _ = load_model(args.checkpoint, "pretrain")
    tok = load_tokenizer(str(data / "vocab"))
    res = mcfg.vision.image_res
    train = load_split(data, "coco_train.json", args.kinds, 4, res, args.seed)
    test = load_split(data, "coco_test.json", args.kinds, 1, res, args.seed + 1)
    if args.mined_share:
        train = mine(model, tok, train, args.mined)
    print(f"{args.kinds}: {len(train.pairs)} training pairs over {len(train.images)} images, "
          f"{len(test.pairs)} held-out captions")
    curve = fine_tune(model, tok, train, test, steps=args.steps, batch=args.batch, lr=args.lr,
                      train_vision=args.train_vision, random_share=args.random_share, eval_every=args.eval_every,
                      seed=args.seed, mined_share=args.mined_share, fusion_only=args.fusion_only)
    if args.save:
        save_model(args.save, model, mcfg, relation_probe=vars(args))
    out = {"kinds": args.kinds, "train_vision": args.train_vision, "lr": args.lr,
           "random_share": args.random_share, "mined_share": args.mined_share, "curve": curve}
    print(json.dumps(out))
    return out


if __name__ == "__main__":
    main()
