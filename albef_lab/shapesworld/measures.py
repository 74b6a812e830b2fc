"""What the workbench's answers are worth on ShapesWorld, where the scene graphs know the truth: one-object search
beside a random image, colour words' maps on the object they name, zero-shot classification beside chance."""

from __future__ import annotations

import json
import math
from pathlib import Path

from albef_lab.inference import Workbench, read_image
from albef_lab.shapesworld.probes import patches_under


def object_query_accuracy(wb: Workbench, data: str | Path, rerank: bool = True, kind: str = "pair") -> dict[str, float]:
    """How often the top image of a one-object query shows what it names, beside the chance of a random image.

    kind: "pair" ("a red circle": colour and shape), "shape" ("a circle"), "colour" ("a red shape"); every
    value present in the gallery is queried once; ShapesWorld's scene graphs decide.
    """
    def facts(o: dict) -> str:
        return {"pair": f"{o['colour']} {o['shape']}", "shape": o["shape"], "colour": f"{o['colour']} shape"}[kind]

    scenes = {Path(s["image"]).name: {facts(o) for o in s["objects"]}
              for s in json.loads((Path(data) / "scenes.json").read_text())}
    shown = [scenes.get(p.name, set()) for p in wb.gallery.paths]
    values = sorted(set().union(*shown))
    hits, chance = 0, 0.0
    for v in values:
        rows, _ = wb.search(f"a {v}", k=8 if rerank else 1, rerank=rerank)
        hits += v in scenes.get(Path(rows[0]["path"]).name, set())
        chance += sum(v in s for s in shown) / len(shown)
    return {"queries": len(values), "top1_acc": 100.0 * hits / len(values), "chance": 100.0 * chance / len(values)}


def colour_word_hits(wb: Workbench, data: str | Path, limit: int = 100) -> dict[str, float]:
    """On test images of two objects of different colours: how often the ITM Grad-CAM map of a colour word, in
    "a <colour> <shape>" of either object, is hotter (mean over the patches under each box) on the object it names
    than on the other one. 50 % is a map that ignores the word."""
    scenes = [s for s in json.loads((Path(data) / "scenes.json").read_text()) if s["split"] == "test"
              and len(s["objects"]) == 2 and s["objects"][0]["colour"] != s["objects"][1]["colour"]][:limit]
    hits = n = 0
    for s in scenes:
        image = read_image(Path(data) / s["image"])
        for own, other in ((0, 1), (1, 0)):
            o = s["objects"][own]
            r = wb.explain(image, f"a {o['colour']} {o['shape']}")
            heat = dict(r["words"])[o["colour"]].flatten()
            grid = math.isqrt(heat.numel())
            on = [heat[[i - 1 for i in patches_under(s["objects"][k]["box"], grid)]].mean() for k in (own, other)]
            hits += bool(on[0] > on[1])
            n += 1
    return {"pairs": n, "hit_rate": 100.0 * hits / max(1, n)}


def classify_accuracy(wb: Workbench, data: str | Path, kind: str = "shape", rerank: bool = True,
                      limit: int = 200) -> dict[str, float]:
    """Zero-shot classification of the held-out one-object images: the object's shape among every shape ("a
    {}"), or its colour among every colour ("a {} shape"), beside chance and always naming the most common one."""
    from collections import Counter

    from albef_lab.shapesworld.world import COLOURS, SHAPES

    labels, template = (SHAPES, "a {}") if kind == "shape" else (sorted(COLOURS), "a {} shape")
    scenes = [s for s in json.loads((Path(data) / "scenes.json").read_text())
              if s["split"] == "test" and len(s["objects"]) == 1][:limit]
    truth = [s["objects"][0][kind] for s in scenes]
    hits = 0
    for s, true in zip(scenes, truth, strict=True):
        rows, _ = wb.classify(read_image(Path(data) / s["image"]), labels, template, rerank=rerank)
        hits += rows[0]["label"] == true
    n = max(1, len(scenes))
    return {"images": len(scenes), "acc": 100.0 * hits / n, "chance": 100.0 / len(labels),
            "majority": 100.0 * Counter(truth).most_common(1)[0][1] / n if truth else 0.0}
