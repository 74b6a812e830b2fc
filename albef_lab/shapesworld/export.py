"""Write a ShapesWorld to disk in the official ALBEF/COCO/VQA/NLVR2/SNLI-VE/RefCOCO+ JSON formats.

Layout of OUT:
  images/NNNNNN.png          scenes.json (ground truth)    world.json (settings and counts)
  vocab/vocab.txt            pretrain.json                 coco_{train,val,test}.json
  vqa_{train,test}.json      answer_list.json              nlvr_{train,val,test}.json
  ve_{train,val,test}.json   refcoco+/{refs,instances,dets}.json, grounding_{train,test}.json
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from tqdm import tqdm

from albef_lab.data.tokenizer import write_vocab
from albef_lab.files import write_text_atomic
from albef_lab.shapesworld import world as W

# The generator's version, written to world.json: a world made by an older generator is made again.
# 2: SNLI-VE, NLVR2 and VQA texts no longer give their labels away without the image.
VERSION = 2


def world_version(root: str | Path) -> int | None:
    """The generator version of the ShapesWorld at `root` (1 before it was recorded); None if it is not one."""
    path = Path(root) / "world.json"
    if not path.is_file():
        return None
    return json.loads(path.read_text())["settings"].get("version", 1)


NOISE_STYLES = ("replace", "web")


@dataclass
class WorldSettings:
    out: str = "data/shapesworld"
    seed: int = 0
    images: int = 3000
    res: int = 64
    noise: float = 0.0  # fraction of pre-training captions corrupted
    # replace: a wholly wrong caption (world.NOISE_KINDS); web: a partly right one with its false words recorded
    # (world.WEB_NOISE_KINDS)
    noise_style: str = "replace"
    captions_per_image: int = 3  # pre-training / retrieval train
    test_captions: int = 5  # retrieval val/test, as COCO
    questions_per_image: int = 2
    # the kinds of retrieval and pre-training captions (world.CAPTION_KINDS); ("listing", "relation"): captions
    # true of few scenes (docs/itm_recipe.md). Noisy captions keep their own forms
    caption_kinds: tuple[str, ...] = W.CAPTION_KINDS
    workers: int = 2


def _split(i: int, n: int) -> str:
    return "train" if i < int(n * 0.8) else ("val" if i < int(n * 0.9) else "test")


def _render_chunk(args: tuple[int, int, int, int, str]) -> int:
    start, stop, seed, res, out = args
    for i in range(start, stop):
        W.render(W.make_scene(i, seed), res).save(Path(out) / "images" / f"{i:06d}.png", compress_level=1)
    return stop - start


def _dump(path: Path, obj) -> None:
    write_text_atomic(path, json.dumps(obj, indent=None, separators=(",", ":")))


@dataclass
class Plan:
    """The scenes of a world and what every task writer needs to know about them."""

    s: WorldSettings
    scenes: list[W.Scene]
    img: list[str]  # image file of each scene
    split: list[str]  # train / val / test of each scene
    by_split: dict[str, list[int]]

    def rng(self, i: int, task: str) -> random.Random:
        """One generator per (scene, task): a task's text never depends on another task's draws."""
        return random.Random(f"{self.s.seed}/{i}/{task}")


def write_world(s: WorldSettings, progress: bool = True) -> dict:
    """Generate scenes, render images, and write every task's annotations. Returns the counts."""
    if not 0.0 <= s.noise <= 1.0:
        raise ValueError(f"noise must be a fraction in [0, 1], got {s.noise}")
    if s.noise_style not in NOISE_STYLES:
        raise ValueError(f"noise_style must be one of {list(NOISE_STYLES)}, got {s.noise_style!r}")
    if s.images < 10:
        raise ValueError("a world needs at least 10 images (train/val/test splits)")
    if not s.caption_kinds or set(s.caption_kinds) - set(W.CAPTION_KINDS):
        raise ValueError(f"caption_kinds must be some of {list(W.CAPTION_KINDS)}, got {list(s.caption_kinds)}")
    out = Path(s.out)
    (out / "images").mkdir(parents=True, exist_ok=True)
    (out / "refcoco+").mkdir(exist_ok=True)
    plan = make_plan(s)
    render_images(s, out, progress)
    files = {"scenes.json": [dict(sc.to_dict(), image=plan.img[i], split=plan.split[i])
                             for i, sc in enumerate(plan.scenes)]}
    counts = {"images": s.images, **{f"{k}_images": len(v) for k, v in plan.by_split.items()}}
    for writer in (caption_files, vqa_files, nlvr_files, ve_files, grounding_files):
        task_files, task_counts = writer(plan)
        files.update(task_files)
        counts.update(task_counts)
    write_vocab(out / "vocab", W.vocabulary())
    for name, obj in files.items():
        _dump(out / name, obj)
    settings = {k: v for k, v in vars(s).items() if k not in ("workers", "out")} | {"version": VERSION}
    if tuple(s.caption_kinds) == W.CAPTION_KINDS:  # a default world's world.json stays as it was
        settings.pop("caption_kinds")
    if s.noise_style == "replace":
        settings.pop("noise_style")
    _dump(out / "world.json", {"settings": settings, "counts": counts})
    return counts


def make_plan(s: WorldSettings) -> Plan:
    split = [_split(i, s.images) for i in range(s.images)]
    return Plan(s, [W.make_scene(i, s.seed) for i in range(s.images)], [f"images/{i:06d}.png" for i in range(s.images)],
                split, {k: [i for i in range(s.images) if split[i] == k] for k in ("train", "val", "test")})


def render_images(s: WorldSettings, out: Path, progress: bool) -> None:
    """Every scene as a PNG, in `s.workers` processes."""
    chunk = max(1, s.images // (8 * max(1, s.workers)))
    jobs = [(a, min(a + chunk, s.images), s.seed, s.res, str(out)) for a in range(0, s.images, chunk)]
    bar = tqdm(total=s.images, desc="rendering", unit="img", disable=not progress)
    if s.workers > 1:
        with ProcessPoolExecutor(s.workers) as pool:
            for n in pool.map(_render_chunk, jobs):
                bar.update(n)
    else:
        for job in jobs:
            bar.update(_render_chunk(job))
    bar.close()


def caption_files(p: Plan) -> tuple[dict, dict]:
    """Pre-training pairs (a fraction corrupted as noisy alt-text) and COCO-style retrieval splits."""
    s, img = p.s, p.img
    pretrain, coco = [], {"train": [], "val": [], "test": []}
    for i in p.by_split["train"]:
        for c in W.captions(p.scenes[i], p.rng(i, "caption"), s.captions_per_image, s.caption_kinds):
            pretrain.append({"image": img[i], "caption": c, "image_id": i, "noise": "none"})
            coco["train"].append({"image": img[i], "caption": c, "image_id": str(i)})
    n_noisy = round(s.noise * len(pretrain))
    noise_rng = random.Random(f"{s.seed}/noise")
    for k in noise_rng.sample(range(len(pretrain)), n_noisy):
        i = pretrain[k]["image_id"]
        other = p.scenes[noise_rng.choice([j for j in p.by_split["train"] if j != i] or [i])]
        if s.noise_style == "web":
            pretrain[k]["caption"], pretrain[k]["noise"], pretrain[k]["false_words"] = W.web_noise(
                p.scenes[i], other, noise_rng)
        else:
            pretrain[k]["caption"], pretrain[k]["noise"] = W.corrupt_caption(p.scenes[i], other, noise_rng)
    for part in ("val", "test"):
        for i in p.by_split[part]:
            coco[part].append({"image": img[i], "caption": W.captions(p.scenes[i], p.rng(i, "caption"),
                                                                      s.test_captions, s.caption_kinds)})
    files = {"pretrain.json": pretrain, **{f"coco_{part}.json": coco[part] for part in coco}}
    counts = {"pretrain_pairs": len(pretrain), "noisy_captions": n_noisy}
    if s.noise_style == "web":  # the noise in words: what a teacher that reads the image could correct
        counts["pretrain_words"] = sum(len(e["caption"].split()) for e in pretrain)
        counts["false_words"] = sum(len(e.get("false_words", [])) for e in pretrain)
    return files, counts


def vqa_files(p: Plan) -> tuple[dict, dict]:
    """VQA v2 style: distinct questions per image with ten annotator answers; the answer list."""
    vqa = {"train": [], "test": []}
    qid = 0
    for part, ids in (("train", p.by_split["train"]), ("test", p.by_split["val"] + p.by_split["test"])):
        for i in ids:
            r = p.rng(i, "vqa")
            seen = set()
            for _ in range(p.s.questions_per_image * 3):
                q = W.vqa_item(p.scenes[i], r)
                if q["question"] in seen:
                    continue
                seen.add(q["question"])
                answers = W.annotator_answers(q["answer"], q["type"], r)
                vqa[part].append({"question_id": qid, "image": p.img[i], "question": q["question"],
                                  "answer": answers, "type": q["type"], "dataset": "vqa"})
                qid += 1
                if len(seen) == p.s.questions_per_image:
                    break
    answer_list = sorted(set(W.COLOURS) | set(W.SHAPES) | set(W.NUMBERS) | {"yes", "no"})
    files = {"answer_list.json": answer_list, **{f"vqa_{part}.json": vqa[part] for part in vqa}}
    return files, {"vqa_train": len(vqa["train"]), "vqa_test": len(vqa["test"]), "answers": len(answer_list)}


def nlvr_files(p: Plan) -> tuple[dict, dict]:
    """NLVR2: each image is the left image of one pair with a random partner of its split."""
    nlvr = {k: [] for k in p.by_split}
    for part, ids in p.by_split.items():
        for n, i in enumerate(ids):
            r = p.rng(i, "nlvr")
            j = r.choice([x for x in ids if x != i] or [i])
            sentence = W.nlvr_statement(p.scenes[i], p.scenes[j], r, want=n % 2 == 0)
            label = W.nlvr_truth(sentence, p.scenes[i], p.scenes[j])
            nlvr[part].append({"images": [p.img[i], p.img[j]], "sentence": sentence, "label": str(label)})
    return {f"nlvr_{part}.json": v for part, v in nlvr.items()}, {"nlvr": sum(len(v) for v in nlvr.values())}


def ve_files(p: Plan) -> tuple[dict, dict]:
    """SNLI-VE: one hypothesis per label per image."""
    ve = {k: [] for k in p.by_split}
    for part, ids in p.by_split.items():
        for i in ids:
            for sentence, label in W.ve_items(p.scenes[i], p.rng(i, "ve")):
                ve[part].append({"image": p.img[i], "sentence": sentence, "label": label})
    return {f"ve_{part}.json": v for part, v in ve.items()}, {"ve": sum(len(v) for v in ve.values())}


def grounding_files(p: Plan) -> tuple[dict, dict]:
    """RefCOCO+ style: refs, instances and proposals (dets), plus the image-expression lists for training."""
    res = p.s.res
    refs, annotations, images, dets = [], [], [], {}
    g_train, g_test = [], []
    ann_id = ref_id = 0
    for i, sc in enumerate(p.scenes):
        r = p.rng(i, "ref")
        images.append({"id": i, "file_name": p.img[i], "height": res, "width": res})
        ref_split = p.split[i] if p.split[i] != "test" else ("testA" if len(sc.objects) <= 3 else "testB")
        dets[str(i)] = W.proposals(sc, r, res)
        targets = r.sample(range(len(sc.objects)), min(2, len(sc.objects)))
        first_ann = ann_id
        for o in sc.objects:
            box = o.pixel_box(res)
            annotations.append({"id": ann_id, "image_id": i, "bbox": box, "area": round(box[2] * box[3], 2),
                                "category_id": W.SHAPES.index(o.shape) + 1, "iscrowd": 0})
            ann_id += 1
        for t in targets:
            text = W.referring_expression(sc, t, r)
            refs.append({"ref_id": ref_id, "image_id": i, "ann_id": first_ann + t, "split": ref_split,
                         "category_id": W.SHAPES.index(sc.objects[t].shape) + 1, "sentences": [{"sent": text}]})
            (g_train if ref_split == "train" else g_test).append({"image": p.img[i], "text": text, "ref_id": ref_id})
            ref_id += 1
    instances = {"images": images, "annotations": annotations,
                 "categories": [{"id": k + 1, "name": n} for k, n in enumerate(W.SHAPES)]}
    files = {"grounding_train.json": g_train, "grounding_test.json": g_test, "refcoco+/refs.json": refs,
             "refcoco+/instances.json": instances, "refcoco+/dets.json": dets}
    return files, {"refs": len(refs)}


def ensure_world(root: str | Path, world, train_file: str | Path, progress: bool = True, main: bool = True,
                 barrier: Callable[[], None] | None = None) -> None:
    """Generate ShapesWorld at `root` as `world` (a `WorldConfig`) says, when the training file is absent or the
    world was made by another generator version.

    Under several processes only `main` writes; `barrier` makes the others wait for it.
    """
    old = world_version(root)
    stale = old is not None and old != VERSION and world.make
    if stale or not Path(train_file).is_file():
        if not world.make:
            raise FileNotFoundError(f"training annotations not found: {train_file} (and shapesworld.world.make is off)")
        if main:
            why = f"was made by generator version {old}, this is {VERSION}" if stale else "not found"
            print(f"ShapesWorld at {root} {why}: generating {world.images} images ...")
            write_world(WorldSettings(out=str(root), seed=world.seed, images=world.images, res=world.res,
                                      noise=world.noise, noise_style=world.noise_style,
                                      caption_kinds=tuple(world.caption_kinds)), progress=progress)
    if barrier is not None:
        barrier()
