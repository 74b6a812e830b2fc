"""Weakly-supervised grounding (RefCOCO+ protocol): rank region proposals by a Grad-CAM map.

The ranking and the IoU follow the original's `grounding_eval` / `computeIoU` exactly (checked against
../shared/reference/fixtures/grounding.pt).
"""

from __future__ import annotations

import random
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Subset

from albef_lab.data.datasets import GroundingDataset
from albef_lab.data.formats import GROUNDING, read_entries, read_refer
from albef_lab.data.tokenizer import Tokenizer
from albef_lab.data.transforms import eval_transform
from albef_lab.models.base import eval_mode
from albef_lab.viz.gradcam import gradcam, upsample


def iou_xywh(a: list[float], b: list[float]) -> float:
    """IoU of two [x, y, w, h] boxes counted in whole pixels, as the original: the last pixel is x + w - 1,
    and boxes that touch in one row or column do not overlap."""
    x1, y1 = max(a[0], b[0]), max(a[1], b[1])
    x2, y2 = min(a[0] + a[2] - 1, b[0] + b[2] - 1), min(a[1] + a[3] - 1, b[1] + b[3] - 1)
    inter = (x2 - x1 + 1) * (y2 - y1 + 1) if x1 < x2 and y1 < y2 else 0
    union = a[2] * a[3] + b[2] * b[3] - inter
    return float(inter) / union if union > 0 else 0.0


def best_proposal(heat: Tensor, proposals: list[list[float]], alpha: float = 0.5) -> list[float] | None:
    """The proposal [x, y, w, h] with the largest heat inside it divided by area**alpha.

    As the original, a proposal must score strictly above 0 and above the best so far; with none that
    does, None (the original would reuse the previous expression's box).
    """
    best, best_score = None, 0.0
    for p in proposals:
        x, y, w, h = p[:4]
        score = heat[int(y):int(y + h), int(x):int(x + w)].sum().item() / (w * h) ** alpha
        if score > best_score:
            best, best_score = p[:4], score
    return best


def choose_proposal(cam: Tensor, height: int, width: int, proposals: list[list[float]],
                    alpha: float = 0.5) -> list[float] | None:
    """The proposal chosen under the map `cam` [s, s], resized bicubically to the image (as the original)."""
    return best_proposal(upsample(cam[None], height, width)[0], proposals, alpha)


def grounding_hit(cam: Tensor, box: list[float], height: int, width: int, proposals: list[list[float]],
                  alpha: float = 0.5) -> bool:
    """Is the best proposal under the map `cam` [s, s] a hit (IoU >= 0.5 with the referred box)?"""
    pred = choose_proposal(cam, height, width, proposals, alpha)
    return pred is not None and iou_xywh(box, pred) >= 0.5


def split_accuracy(hits: list[bool], splits: list[str]) -> dict[str, float]:
    """Accuracy (percent) per split and over all ('acc_all')."""
    n_hit, n = defaultdict(int), defaultdict(int)
    for hit, split in zip(hits, splits, strict=True):
        for s in (split, "all"):
            n_hit[s] += int(hit)
            n[s] += 1
    return {f"acc_{s}": 100.0 * n_hit[s] / n[s] for s in n}


# (images, ids, mask) -> maps [B, s, s], or {layer: maps} (each layer's records are then kept apart)
HeatFn = Callable[[Tensor, Tensor, Tensor], Tensor | dict]


def gradcam_heat(model: nn.Module, mode: str = "itm", block: int = -1) -> HeatFn:
    """The paper's maps: Grad-CAM of the ITM score on a cross-attention layer, or of ITC on a ViT block."""
    return lambda images, ids, mask: gradcam(model, images, ids, mask, mode, block)


def camlib_heat(model: nn.Module, method: str) -> HeatFn:
    """A pytorch-grad-cam method on the ViT with the image-text ITC similarity as its target, one pair at a time."""
    from albef_lab.viz.camlib import similarity_cams

    def heat(images: Tensor, ids: Tensor, mask: Tensor) -> Tensor:
        return torch.stack([torch.from_numpy(similarity_cams(model, images[i:i + 1], ids[i:i + 1], mask[i:i + 1],
                                                             (method,))[method]) for i in range(images.shape[0])])
    return heat


TEXT_CONTROLS = ("", "shuffle")


def other_objects_texts(entries: list[dict], seed: int = 0) -> dict[int, str]:
    """ref_id -> the expression of another object of the same image (of another image where it has one object):
    the text-blind control. A map that ignores the words scores as high with these as with the right ones."""
    rng = random.Random(seed)
    by_image = defaultdict(list)
    for e in entries:
        by_image[e["image"]].append(e)
    out = {}
    for e in entries:
        others = [o["text"] for o in by_image[e["image"]] if o["text"] != e["text"]]
        while not others:  # a one-object image: an expression of some other image
            o = entries[rng.randrange(len(entries))]
            others = [o["text"]] if o["image"] != e["image"] else []
        out[int(e["ref_id"])] = rng.choice(others)
    return out


def grounding_records(model: nn.Module, tokenizer: Tokenizer, ann_file: str | Path, image_root: str | Path,
                      refer_dir: str | Path, res: int, device: torch.device, heat: HeatFn | None = None,
                      alpha: float = 0.5, batch_size: int = 32, limit: int | None = None,
                      text_control: str = "") -> list[dict]:
    """One record per referring expression: ref_id, split, image file, text, the referred box, the chosen
    proposal (None if no proposal had heat) and hit (IoU >= 0.5). `heat` defaults to the paper's ITM Grad-CAM;
    `limit` takes the first expressions only; `text_control="shuffle"` maps each expression of another object of
    the image instead (`other_objects_texts`), still scored against the referred box."""
    if text_control not in TEXT_CONTROLS:
        raise ValueError(f"text_control must be one of {TEXT_CONTROLS}, not {text_control!r}")
    heat = heat or gradcam_heat(model)
    refer = read_refer(refer_dir)
    ds = GroundingDataset(ann_file, image_root, eval_transform(res))
    swapped = other_objects_texts(ds.entries) if text_control else {}
    if limit is not None:
        ds = Subset(ds, range(min(limit, len(ds))))
    records = []
    with eval_mode(model):
        for images, texts, ref_ids in DataLoader(ds, batch_size=batch_size, shuffle=False):
            if swapped:
                texts = [swapped[r] for r in ref_ids.tolist()]
            ids, mask = tokenizer(list(texts))
            maps = heat(images.to(device), ids.to(device), mask.to(device))
            for key, layer_maps in (maps if isinstance(maps, dict) else {None: maps}).items():
                for ref_id, text, cam in zip(ref_ids.tolist(), texts, layer_maps, strict=True):
                    ref = refer["refs"][ref_id]
                    image = refer["images"][ref["image_id"]]
                    box = refer["anns"][ref["ann_id"]]["bbox"]
                    chosen = choose_proposal(cam, image["height"], image["width"], refer["dets"][ref["image_id"]],
                                             alpha)
                    records.append({"ref_id": ref_id, "split": ref["split"], "file_name": image["file_name"],
                                    "text": text, "box": box, "chosen": chosen, "layer": key,
                                    "hit": chosen is not None and iou_xywh(box, chosen) >= 0.5})
    return records


def evaluate_grounding(model: nn.Module, tokenizer: Tokenizer, ann_file: str | Path, image_root: str | Path,
                       refer_dir: str | Path, res: int, device: torch.device, block: int = -1, mode: str = "itm",
                       alpha: float = 0.5, batch_size: int = 32, heat: HeatFn | None = None,
                       limit: int | None = None, text_control: str = "") -> dict[str, float]:
    """Accuracy (IoU >= 0.5 of the chosen proposal with the referred box) per split and overall, in percent.

    `block`: cross-attention layer for mode 'itm' (-1 = `default_itm_layer`: the third fusion layer, block 8 of 12
    at base size), ViT block for mode 'itc' (-1 = the last). `heat`: any other map (e.g. `camlib_heat`) instead.
    `text_control="shuffle"`: the text-blind control (`grounding_records`).
    """
    records = grounding_records(model, tokenizer, ann_file, image_root, refer_dir, res, device,
                                heat or gradcam_heat(model, mode, block), alpha, batch_size, limit, text_control)
    return split_accuracy([r["hit"] for r in records], [r["split"] for r in records])


def layer_sweep(model: nn.Module, tokenizer: Tokenizer, ann_file: str | Path, image_root: str | Path,
                refer_dir: str | Path, res: int, device: torch.device, limit: int | None = None) -> list[dict]:
    """Accuracy for Grad-CAM of ITM on every cross-attention layer and of ITC on every ViT block (one forward and
    backward per batch and mode gives every layer's maps): the evidence for the paper's choice of layer.
    Rows: {'mode', 'layer', 'acc_*'}."""
    from albef_lab.viz.gradcam import cross_attention_layers, itc_gradcam_blocks, itm_gradcam_layers

    itm_layers, blocks = cross_attention_layers(model), list(range(len(model.visual_encoder.blocks)))
    heats = {"itm": lambda images, ids, mask: itm_gradcam_layers(model, images, ids, mask, itm_layers),
             "itc": lambda images, ids, mask: itc_gradcam_blocks(model, images, ids, mask, blocks)}
    rows = []
    for mode, layers in (("itm", itm_layers), ("itc", blocks)):
        records = grounding_records(model, tokenizer, ann_file, image_root, refer_dir, res, device, heats[mode],
                                    limit=limit)
        for layer in layers:
            mine = [r for r in records if r["layer"] == layer]
            rows.append({"mode": mode, "layer": layer,
                         **split_accuracy([r["hit"] for r in mine], [r["split"] for r in mine])})
    return rows


def _expected_accuracy(ann_file: str | Path, refer_dir: str | Path, p_hit: Callable[[dict, dict], float]
                       ) -> dict[str, float]:
    """Accuracy per split and overall of a guess whose chance of a hit on reference `ref` is `p_hit(ref, refer)`."""
    refer = read_refer(refer_dir)
    hits, counts = defaultdict(float), defaultdict(int)
    for e in read_entries(ann_file, GROUNDING):
        ref = refer["refs"][e["ref_id"]]
        p = p_hit(ref, refer)
        for split in (ref["split"], "all"):
            hits[split] += p
            counts[split] += 1
    return {f"acc_{k}": 100.0 * hits[k] / counts[k] for k in counts}


def random_proposal_baseline(ann_file: str | Path, refer_dir: str | Path) -> dict[str, float]:
    """Expected accuracy of picking a proposal uniformly at random, per split (background proposals included)."""
    def p_hit(ref: dict, refer: dict) -> float:
        box, dets = refer["anns"][ref["ann_id"]]["bbox"], refer["dets"][ref["image_id"]]
        return sum(iou_xywh(box, d[:4]) >= 0.5 for d in dets) / len(dets)

    return _expected_accuracy(ann_file, refer_dir, p_hit)


def random_object_baseline(ann_file: str | Path, refer_dir: str | Path, alpha: float = 0.5) -> dict[str, float]:
    """Expected accuracy of a map that ignores the text and heats one of the image's objects at random (its box,
    evenly), chosen by the same proposal rule: what a model that finds objects but not the one named scores."""
    objects = {}

    def p_hit(ref: dict, refer: dict) -> float:
        if not objects:
            for a in refer["anns"].values():
                objects.setdefault(a["image_id"], []).append(a["bbox"])
        image, target = refer["images"][ref["image_id"]], refer["anns"][ref["ann_id"]]["bbox"]
        hits = 0
        for x, y, w, h in objects[ref["image_id"]]:
            heat = torch.zeros(image["height"], image["width"])
            heat[int(y):int(y + h), int(x):int(x + w)] = 1.0
            chosen = best_proposal(heat, refer["dets"][ref["image_id"]], alpha)
            hits += chosen is not None and iou_xywh(target, chosen) >= 0.5
        return hits / len(objects[ref["image_id"]])

    return _expected_accuracy(ann_file, refer_dir, p_hit)
