"""What a pre-trained checkpoint's ITM head knows, on the held-out split of a ShapesWorld folder.

    python scripts/itm_diagnosis.py runs/pretrain_tiny/model.pth [--data data/shapesworld] [--k 16] [--split train]

Beside the held-out ITM accuracies of training's evaluation: how often each score (ITM, ITC) prefers an image's
own caption to its hard negative, how often ITM says "match" to the own caption by the caption's form, and
retrieval R@1 four ways: ITC alone, ITC's top k re-ranked by ITM, re-ranked by the ground truth (the ceiling of
any re-ranker), and the ground truth alone (`truth_only`: what the world's shared captions leave to win); and a
fixed hard set no model chose (`edit_probe`: one-word edits of the own caption, by kind).
`--split train` measures the same on training images. docs/itm_recipe.md reads these numbers. The last line is JSON.
"""

from __future__ import annotations

import argparse
import json
import tempfile
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from albef_lab.data.formats import PRETRAIN, read_entries
from albef_lab.data.tokenizer import Tokenizer, load_tokenizer
from albef_lab.eval.retrieval import (
    EncodedSplit,
    encode_split,
    encode_texts,
    itm_margin,
    itm_margins,
    itm_negatives,
    recall_metrics,
    rerank_scores,
    zero_shot_eval,
)
from albef_lab.models.base import eval_mode
from albef_lab.models.factory import create_model, load_model
from albef_lab.shapesworld import world as W
from albef_lab.shapesworld.config import load_config
from albef_lab.shapesworld.negatives import train_scenes
from albef_lab.shapesworld.probes import linear_probe, object_features
from albef_lab.shapesworld.tasks import ShapesWorldPretrainTask as Task


def truth_only_r1(truth: Tensor, txt2img: Tensor) -> list[float]:
    """[text->image, image->text] R@1 (expected, in percent) of a judge that knows only which captions are true of
    which images: what a world's shared captions leave to win. Text->image: any image the text is true of, at
    random. Image->text: among the captions true of the image, one of those true of the fewest images (the
    likeliest to have been written for it). `truth` [images, texts] bool, `txt2img` [texts]."""
    truth, txt2img = truth.cpu().bool(), txt2img.cpu()
    if not truth[txt2img, torch.arange(len(txt2img))].all():
        raise ValueError("truth must hold every text of its own image (txt2img)")
    shared = truth.sum(0).float()  # per text: the images it is true of
    t2i = (1.0 / shared).mean().item()
    own = txt2img[None, :] == torch.arange(len(truth))[:, None]
    fewest = shared.masked_fill(~truth, float("inf")).min(dim=1, keepdim=True).values
    picked = truth & (shared[None, :] == fewest)
    i2t = ((picked & own).sum(1) / picked.sum(1)).mean().item()
    return [round(100.0 * t2i, 2), round(100.0 * i2t, 2)]


def truth_rerank_scores(sims: Tensor, truth: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """The ceiling of ITM re-ranking: each query's ITC top-k re-ranked by the ground truth (true pairs first, ITC's
    order within each group), -100 outside the top-k as in `rerank_scores`. `sims` [images, texts] cosine
    similarities, `truth` [images, texts] bool. Returns (score_i2t [images, texts], score_t2i [texts, images])."""
    ranked = sims + 10.0 * truth.to(sims.device, sims.dtype)  # cosines lie in [-1, 1]: truth decides first

    def top_k_only(scores: Tensor, values: Tensor) -> Tensor:  # `values` at each row's top-k of `scores`, else -100
        top = scores.topk(min(k, scores.shape[1]), dim=1).indices
        return torch.full_like(scores, -100.0).scatter_(1, top, values.gather(1, top))

    return top_k_only(sims, ranked), top_k_only(sims.t(), ranked.t())


@torch.no_grad()
def edit_probe(model: nn.Module, tokenizer: Tokenizer, dataset, encoded: EncodedSplit, scenes: list,
               device: torch.device, batch_size: int = 128) -> dict[str, dict[str, float]]:
    """Held-out ITM against hard negatives that no model chose: each image's first caption against one one-word
    edit of each kind that its scene graph says is false (`world.caption_edits`: colour, shape, size, direction,
    count, binding; the edit taken is the image index modulo the options, so the set is fixed). Unlike the
    ITC-mined hard negative of `zero_shot_eval`, it does not harden as ITC learns, and it tells which distinction
    the fused half lacks. Per kind and over all pairs: `n`; `itm_acc` on the balanced (own caption, edit) pairs;
    `itm_pair` / `itc_pair`: % of pairs whose own caption ITM / ITC score above the edit."""
    n = encoded.image_states.shape[0]
    first = [dataset.img2txt[i][0] for i in range(n)]
    rows, kinds, texts = [], [], []
    for i in range(n):
        for kind, options in W.caption_edits(dataset.text[first[i]], [scenes[i]]).items():
            rows.append(i)
            kinds.append(kind)
            texts.append(options[i % len(options)])
    if not texts:
        return {}
    rows_t, first_t = torch.tensor(rows, device=device), torch.tensor(first, device=device)
    with eval_mode(model):
        e_states, e_atts, e_feat = encode_texts(model, tokenizer, texts, device)
        pos = itm_margins(model, encoded.text_states[first_t], encoded.text_atts[first_t], encoded.image_states,
                          batch_size)[rows_t]
        neg = itm_margins(model, e_states, e_atts, encoded.image_states[rows_t], batch_size)
    itc_pos = (encoded.image_feat[rows_t] * encoded.text_feat[first_t[rows_t]]).sum(1)
    itc_neg = (encoded.image_feat[rows_t] * e_feat).sum(1)
    out = {}
    for kind in [*sorted(set(kinds)), "all"]:
        sel = torch.tensor([kind in ("all", k) for k in kinds], device=device)
        pos_ok, neg_ok, itm_pair, itc_pair = (100.0 * b[sel].float().mean().item()
                                              for b in (pos > 0, neg <= 0, pos > neg, itc_pos > itc_neg))
        out[kind] = {"n": int(sel.sum()), "itm_acc": (pos_ok + neg_ok) / 2, "itm_pair": itm_pair,
                     "itc_pair": itc_pair}
    return out



def train_split_file(task: Task, n_images: int, out: Path) -> Path:
    """The first `n_images` training images with their captions, in the held-out split's layout: the same
    measurements on images the model was trained on tell learning from generalising."""
    by_image: dict[str, list[str]] = {}
    for e in read_entries(task.train_file, PRETRAIN):
        if e["image"] in by_image or len(by_image) < n_images:
            caps = e["caption"] if isinstance(e["caption"], list) else [e["caption"]]
            by_image.setdefault(e["image"], []).extend(caps)
    out.write_text(json.dumps([{"image": im, "caption": caps} for im, caps in by_image.items()]))
    return out


def pixel_features(images: torch.Tensor, scenes: list) -> torch.Tensor:
    """Each object's feature: its own pixels, the box resized to 8 x 8 (what the image offers a linear read)."""
    res = images.shape[-1]
    feats = []
    for i, sc in enumerate(scenes):
        for o in sc.objects:
            x0, y0, x1, y1 = (int(v * res) for v in o.box)
            feats.append(F.interpolate(images[None, i, :, y0:y1 + 1, x0:x1 + 1], size=(8, 8), mode="bilinear",
                                       align_corners=False).flatten())
    return torch.stack(feats)


def probe_objects(scenes: list, features: torch.Tensor) -> dict[str, float]:
    """What per-object `features` hold of each object's shape, colour and size: the accuracy of a linear probe fit
    on the objects of even-numbered images and scored on the others, beside the majority class's."""
    objects = [(i, o) for i, sc in enumerate(scenes) for o in sc.objects]
    train, x = torch.tensor([i % 2 == 0 for i, _ in objects]), features.double()
    out = {}
    for name, values in (("shape", W.SHAPES), ("colour", list(W.COLOURS)), ("size", list(W.SIZES))):
        y = torch.tensor([values.index(getattr(o, name)) for _, o in objects])
        out[name] = round(linear_probe(x, y, train), 1)
        out[name + "_majority"] = round(100.0 * (y[~train] == y[train].mode().values).float().mean().item(), 1)
    return out


@torch.no_grad()
def diagnose(checkpoint: str, data: str, k: int, split: str = "test") -> dict:
    cfg = load_config(None, [f"data.root={data}"], "tiny")
    model, cfg.model, _ = load_model(checkpoint, "pretrain")
    tok = load_tokenizer(f"{data}/vocab")
    task = Task(cfg, tok)
    with tempfile.TemporaryDirectory() as tmp:
        if split == "train":
            task.val_file = train_split_file(task, len(task.retrieval_val()), Path(tmp) / "train_split.json")
        val = task.retrieval_val()
        truth = task.truth(val)
    if truth is None:
        raise SystemExit(f"{data} has no scenes.json naming the {split} images: the diagnosis needs ShapesWorld")
    scenes = train_scenes(Path(data) / "scenes.json", [e["image"] for e in val.entries])
    device = torch.device("cpu")
    enc = encode_split(model, val, tok, device)
    out = zero_shot_eval(model, val, tok, device, truth=truth, encoded=enc)
    image_states, image_feat, text_states, text_atts, text_feat = enc
    with eval_mode(model):
        sims = image_feat @ text_feat.t()
        n = len(val)
        first = torch.tensor([val.img2txt[i][0] for i in range(n)])
        said = itm_margin(model, text_states[first], text_atts[first], image_states) > 0  # own caption: "match"?
        txt2img = torch.tensor([val.txt2img[t] for t in range(len(val.text))])
        s_i2t, s_t2i = rerank_scores(model, image_states, image_feat, text_states, text_atts, text_feat, k)
    reranked = recall_metrics(s_i2t, txt2img, scores_t2i=s_t2i)
    i2t, t2i = truth_rerank_scores(sims, truth, k)
    ceiling = recall_metrics(i2t, txt2img, scores_t2i=t2i)
    kinds, accepted = Counter(), Counter()
    for i in range(n):
        kind = W.caption_kind(val.text[first[i]])
        kinds[kind] += 1
        accepted[kind] += int(said[i])
    _, hard = itm_negatives(sims, val.img2txt, truth)
    torch.manual_seed(0)  # the control: the same probe on the tokens of an untrained model of the same shape
    untrained = encode_split(create_model("pretrain", cfg.model), val, tok, device).image_states
    pixels = torch.cat([b[0] for b in DataLoader(val, batch_size=128)])
    return {"split": split, "object_probe": probe_objects(scenes, object_features(image_states, scenes)),
            "object_probe_untrained": probe_objects(scenes, object_features(untrained, scenes)),
            "object_probe_pixels": probe_objects(scenes, pixel_features(pixels, scenes)),
            "edit_probe": edit_probe(model, tok, val, enc, scenes, device),
            "itm_acc": out["itm_acc"], "itm_acc_hard": out["itm_acc_hard"],
            "own_caption_said_match": 100.0 * said.float().mean().item(),
            "itm_pair_hard": out["itm_pair_hard"], "itc_pair_hard": out["itc_pair_hard"],
            "said_match_by_kind": {kk: round(100.0 * accepted[kk] / kinds[kk], 1) for kk in sorted(kinds)},
            "hard_negative_kinds": dict(sorted(Counter(W.caption_kind(val.text[t]) for t in hard.tolist()).items())),
            "r1": {"itc": [out["img_r1"], out["txt_r1"]], f"itm_rerank_k{k}": [reranked["img_r1"], reranked["txt_r1"]],
                   f"truth_rerank_k{k}": [ceiling["img_r1"], ceiling["txt_r1"]],
                   "truth_only": truth_only_r1(truth, txt2img)},
            "r1_true": {"itc": top1_true(sims, sims.t(), truth), f"itm_rerank_k{k}": top1_true(s_i2t, s_t2i, truth)}}


def top1_true(i2t: Tensor, t2i: Tensor, truth: Tensor) -> list[float]:
    """[text->image, image->text]: how often the top-1 is true by the scene graph, the own pair or another. R@1
    counts only the own pair, and ShapesWorld's captions are often true of many images."""
    img = truth[torch.arange(len(i2t)), i2t.argmax(1).cpu()]
    txt = truth[t2i.argmax(1).cpu(), torch.arange(len(t2i))]
    return [round(100.0 * txt.float().mean().item(), 1), round(100.0 * img.float().mean().item(), 1)]


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("checkpoint")
    p.add_argument("--data", default="data/shapesworld")
    p.add_argument("--k", type=int, default=16, help="ITC candidates each query re-ranks")
    p.add_argument("--split", choices=["test", "train"], default="test",
                   help="train: as many training images as the held-out split has (learned, or generalised?)")
    args = p.parse_args(argv)
    r = diagnose(args.checkpoint, args.data, args.k, args.split)
    print(f"split: {r['split']}")
    print(f"held-out ITM accuracy: {r['itm_acc']:.1f}% against a random false caption, {r['itm_acc_hard']:.1f}% "
          f"against the most ITC-similar one; own caption called a match for {r['own_caption_said_match']:.1f}%")
    print(f"own caption preferred to that hard negative: by ITM for {r['itm_pair_hard']:.1f}% of images, by ITC for "
          f"{r['itc_pair_hard']:.1f}%")
    print("own caption called a match, by its form: " + ", ".join(f"{kk} {v}%" for kk, v in
                                                                  r["said_match_by_kind"].items()))
    print("fixed one-word edits of the own caption, false of the image (pairs: ITM acc. / ITM prefers own / ITC "
          "prefers own):")
    for kind, v in r["edit_probe"].items():
        print(f"  {kind:9s} {v['n']:4d} pairs  {v['itm_acc']:5.1f}  {v['itm_pair']:5.1f}  {v['itc_pair']:5.1f}")
    for key, name in (("object_probe", "trained ViT"), ("object_probe_untrained", "untrained ViT (control)"),
                      ("object_probe_pixels", "the object's pixels")):
        v = r[key]
        print(f"linear probe of each object, {name}: " + ", ".join(
            f"{a} {v[a]}% (majority {v[a + '_majority']}%)" for a in ("shape", "colour", "size")))
    for name, (ti, it) in r["r1"].items():
        print(f"R@1 {name:16s} text->image {ti:5.1f}  image->text {it:5.1f}")
    for name, (ti, it) in r["r1_true"].items():
        print(f"top-1 true by the scene graph, {name:16s} text->image {ti:5.1f}  image->text {it:5.1f}")
    print(json.dumps(r))
    return r


if __name__ == "__main__":
    main()
