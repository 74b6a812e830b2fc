"""Weakly-supervised grounding (RefCOCO+ protocol): rank region proposals by a Grad-CAM map."""

from __future__ import annotations

from collections import defaultdict
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from albef_lab.data.datasets import GroundingDataset
from albef_lab.data.formats import read_refer
from albef_lab.data.tokenizer import Tokenizer
from albef_lab.data.transforms import eval_transform
from albef_lab.viz.gradcam import itc_gradcam, itm_gradcam, upsample


def iou_xywh(a: list[float], b: list[float]) -> float:
    iw = max(0.0, min(a[0] + a[2], b[0] + b[2]) - max(a[0], b[0]))
    ih = max(0.0, min(a[1] + a[3], b[1] + b[3]) - max(a[1], b[1]))
    inter = iw * ih
    union = a[2] * a[3] + b[2] * b[3] - inter
    return inter / union if union > 0 else 0.0


def best_proposal(heat: Tensor, proposals: list[list[float]], alpha: float = 0.5) -> list[float]:
    """The proposal [x, y, w, h] with the largest heat inside it divided by area**alpha (as the original)."""
    best, best_score = proposals[0][:4], -float("inf")
    for p in proposals:
        x, y, w, h = p[:4]
        area = max(w * h, 1e-6)
        score = heat[int(y):int(y + h), int(x):int(x + w)].sum().item() / area**alpha
        if score > best_score:
            best, best_score = p[:4], score
    return best


@torch.no_grad()
def evaluate_grounding(model: nn.Module, tokenizer: Tokenizer, ann_file: str | Path, image_root: str | Path,
                       refer_dir: str | Path, res: int, device: torch.device, block: int = -1, mode: str = "itm",
                       alpha: float = 0.5, batch_size: int = 32) -> dict[str, float]:
    """Accuracy (IoU >= 0.5 of the chosen proposal with the referred box) per split and overall, in percent.

    `block`: cross-attention layer for mode 'itm' (-1 = the third fusion layer, block 8 of 12 at base size),
    ViT block for mode 'itc' (-1 = the last).
    """
    if mode not in ("itm", "itc"):
        raise ValueError(f"Grad-CAM mode must be 'itm' or 'itc', got {mode!r}")
    refer = read_refer(refer_dir)
    ds = GroundingDataset(ann_file, image_root, eval_transform(res))
    if mode == "itm" and block < 0:  # the third fusion layer (8 of 12 at base size), or the last one
        block = min(model.cfg.text.fusion_layer + 2, model.cfg.text.num_hidden_layers - 1)
    was = model.training
    model.eval()
    hits, counts = defaultdict(int), defaultdict(int)
    for images, texts, ref_ids in DataLoader(ds, batch_size=batch_size, shuffle=False):
        images = images.to(device)
        ids, mask = tokenizer(list(texts))
        ids, mask = ids.to(device), mask.to(device)
        maps = itm_gradcam(model, images, ids, mask, block) if mode == "itm" else itc_gradcam(model, images, ids,
                                                                                             mask, block)
        for ref_id, cam in zip(ref_ids.tolist(), maps, strict=True):
            ref = refer["refs"][ref_id]
            image = refer["images"][ref["image_id"]]
            heat = upsample(cam[None], image["height"], image["width"])[0]
            pred = best_proposal(heat, refer["dets"][ref["image_id"]], alpha)
            hit = iou_xywh(refer["anns"][ref["ann_id"]]["bbox"], pred) >= 0.5
            for split in (ref["split"], "all"):
                hits[split] += int(hit)
                counts[split] += 1
    model.train(was)
    return {f"acc_{k}": 100.0 * hits[k] / counts[k] for k in counts}


@torch.no_grad()
def random_proposal_baseline(ann_file: str | Path, refer_dir: str | Path, seed: int = 0) -> dict[str, float]:
    """Expected accuracy of picking a proposal uniformly at random, per split."""
    refer = read_refer(refer_dir)
    from albef_lab.data.formats import GROUNDING, read_entries

    hits, counts = defaultdict(float), defaultdict(int)
    for e in read_entries(ann_file, GROUNDING):
        ref = refer["refs"][e["ref_id"]]
        box = refer["anns"][ref["ann_id"]]["bbox"]
        dets = refer["dets"][ref["image_id"]]
        p = sum(iou_xywh(box, d[:4]) >= 0.5 for d in dets) / len(dets)
        for split in (ref["split"], "all"):
            hits[split] += p
            counts[split] += 1
    return {f"acc_{k}": 100.0 * hits[k] / counts[k] for k in counts}
