"""Every figure the learning tests' bars read, printed: the same world, steps and seeds as tests/test_learning.py.

    python scripts/learning_figures.py [--out runs/learning_figures] [--warmup 600 --steps 360 --finish 600]

One JSON line per stage: the pre-training's held-out numbers; the workbench on the trained model (one-object search
with and without the ITM re-rank against a random image, colour-word maps, zero-shot classification); the
retrieval, grounding, SNLI-VE, NLVR2 and VQA fine-tunes, each beside its controls (chance, majority, text-only
guess, images shuffled, a map on a random object, another object's words). docs/results.md quotes a run of it.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from albef_lab.data.tokenizer import load_tokenizer
from albef_lab.demo import build_workbench
from albef_lab.eval.grounding import layer_sweep
from albef_lab.models.factory import load_model
from albef_lab.shapesworld import load_config
from albef_lab.shapesworld.export import WorldSettings, write_world
from albef_lab.shapesworld.measures import classify_accuracy, colour_word_hits, object_query_accuracy
from albef_lab.shapesworld.recipe import finetune
from albef_lab.train import engine as E


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", default="runs/learning_figures", type=Path)
    ap.add_argument("--warmup", type=int, default=600)
    ap.add_argument("--steps", type=int, default=360)
    ap.add_argument("--finish", type=int, default=600)
    args = ap.parse_args(argv)
    out, t0 = args.out, time.perf_counter()
    world, run = out / "world", out / "pretrain"

    def show(stage: str, **values) -> None:
        rounded = {k: round(v, 2) if isinstance(v, float) else v for k, v in values.items()}
        print(json.dumps({"stage": stage, **rounded, "minutes": round((time.perf_counter() - t0) / 60, 1)}),
              flush=True)

    if not (world / "scenes.json").is_file():
        write_world(WorldSettings(out=str(world), images=3000, seed=0, res=64), progress=False)
    if not (run / "model.pth").is_file():
        r = E.pretrain(load_config(None, [
            f"data.root={world}", f"train.output_dir={run}", f"train.max_steps={args.steps}", "train.progress=false",
            f"train.eval_every={args.steps}", f"train.save_every={args.steps}", "train.max_minutes=0",
            f"shapesworld.warmup_steps={args.warmup}", f"shapesworld.itm_finish_steps={args.finish}"]))
        show("pretrain", **{k: v for k, v in r.items() if isinstance(v, int | float)},
             warmup_shape=r["vision_warmup"]["held_out"]["shape"])
    wb = build_workbench([str(run / "model.pth")], runs=str(out / "demo"), data=str(world), progress=False)
    show("search", reranked=object_query_accuracy(wb, world), itc=object_query_accuracy(wb, world, rerank=False))
    show("colour_words", **colour_word_hits(wb, world, limit=60))
    for kind in ("shape", "colour"):
        show(f"classify_{kind}", itm=classify_accuracy(wb, world, kind), itc=classify_accuracy(wb, world, kind, False))

    r, _ = finetune("retrieval", world, out / "retrieval", run / "model.pth", 40, ["data.k_test=16"])
    show("retrieval", **{k: r[k] for k in ("img_r1", "itc_img_r1", "txt_r1", "itc_txt_r1")})
    cfg = load_config(None, [f"data.root={world}", f"train.output_dir={out / 'g0'}", "train.progress=false"])
    pre, blind = (E.evaluate(cfg, "grounding", run / "model.pth", out_dir=out / "g0", blind=b) for b in ("", "text"))
    show("grounding_before_finetuning", acc=pre["acc_all"], text_blind=blind["acc_all"],
         random_object=pre["random_object_acc"], random_proposal=pre["random_proposal_acc"])
    r, cfg = finetune("grounding", world, out / "grounding", run / "model.pth", 60)
    blind = E.evaluate(cfg, "grounding", out / "grounding" / "model.pth", blind="text")
    model, _, _ = load_model(out / "grounding" / "model.pth")
    rows = layer_sweep(model.eval(), load_tokenizer(world / "vocab"), world / "grounding_test.json", world,
                       world / "refcoco+", cfg.model.vision.image_res, torch.device("cpu"))
    show("grounding", acc=r["acc_all"], text_blind=blind["acc_all"], random_object=r["random_object_acc"],
         random_proposal=r["random_proposal_acc"], layers=[[x["mode"], x["layer"], round(x["acc_all"], 1)]
                                                           for x in rows])
    for task, metric, steps in (("ve", "acc", 60), ("nlvr", "acc", 120), ("vqa", "vqa_acc", 120)):
        r, cfg = finetune(task, world, out / task, run / "model.pth", steps)
        blind = E.evaluate(cfg, task, out / task / "model.pth", blind="shuffle")
        majority = r["majority_answer_acc" if task == "vqa" else "majority_class_acc"]
        show(task, score=r[metric], majority=majority, text_only=r["text_only_acc"], images_shuffled=blind[metric])


if __name__ == "__main__":
    main()
