"""Fine-tune and evaluate every task on ShapesWorld from one pre-trained checkpoint; print the README table.

    python scripts/shapesworld_results.py --init runs/pretrain_tiny/model.pth [--steps 120] [--root data/shapesworld]
        [--tasks vqa nlvr] [--text-assignment-steps 60] [--set train.lr=1e-4 ...]

Each score stands beside its image-blind control (the same fine-tuned model, images shuffled across the
examples) and its baseline (chance, the majority class or answer, a random proposal). NLVR2 starts from its
text-assignment pre-training (`pretrain_nlvr`, in OUT/nlvr/text_assignment), as the paper's.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from albef_lab.eval.grounding import random_proposal_baseline
from albef_lab.models.registry import task_spec
from albef_lab.shapesworld.config import TEXT_ASSIGNMENT_STEPS
from albef_lab.shapesworld.recipe import finetune
from albef_lab.train.engine import evaluate

# task -> [(metric shown, its name)], how the baseline is defined
ROWS = {
    "retrieval": ([("img_r1", "text->image R@1, ITM re-rank of the top 16"), ("itc_img_r1", "text->image R@1, ITC"),
                   ("txt_r1", "image->text R@1, ITM re-rank of the top 16"), ("itc_txt_r1", "image->text R@1, ITC")],
                  "chance 1/#images"),
    "vqa": ([("vqa_acc", "VQA accuracy (official)")], "always the most common answer"),
    "nlvr": ([("acc", "accuracy")], "majority class"),
    "ve": ([("acc", "accuracy (3-way)")], "majority class"),
    "grounding": ([("acc_all", "accuracy, ITM Grad-CAM (3rd fusion layer; the tiny model's 1st of 2)")],
                  "random proposal"),
}


def baseline(task: str, r: dict, root: str) -> float:
    if task == "retrieval":
        return 100.0 / r["n_images"]
    if task == "vqa":
        return r["majority_answer_acc"]
    if task in ("nlvr", "ve"):
        return r["majority_class_acc"]
    return random_proposal_baseline(f"{root}/{task_spec('grounding').files[1]}", f"{root}/refcoco+")["acc_all"]


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser()
    ap.add_argument("--init", required=True)
    ap.add_argument("--root", default="data/shapesworld")
    ap.add_argument("--steps", type=int, default=120)
    ap.add_argument("--out", default="runs/shapesworld_results")
    ap.add_argument("--tasks", nargs="+", default=list(ROWS))
    ap.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="config overrides, after the recipe")
    ap.add_argument("--text-assignment-steps", type=int, default=TEXT_ASSIGNMENT_STEPS,
                    help="NLVR2's text-assignment pre-training before it (0: NLVR2 from --init directly)")
    args = ap.parse_args(argv)
    lines = ["| task | metric | albef-lab | images shuffled | baseline | baseline is | steps | minutes |",
             "|---|---|---|---|---|---|---|---|"]
    results = {}
    for task in args.tasks:
        t0 = time.perf_counter()
        r, cfg = finetune(task, args.root, Path(args.out) / task, args.init, args.steps,
                          ["data.k_test=16", *args.set], args.text_assignment_steps)
        minutes = (time.perf_counter() - t0) / 60
        # grounding's control is the random proposal; the others are evaluated again with shuffled images
        blind = {} if task == "grounding" else evaluate(cfg, task, Path(args.out) / task / "model.pth",
                                                        blind="shuffle")
        metrics, what = ROWS[task]
        base = baseline(task, r, args.root)
        results[task] = {**r, "baseline": base, "blind": blind}
        for key, name in metrics:
            control = f"{blind[key]:.1f}" if key in blind else "-"
            lines.append(f"| {task} | {name} | {r[key]:.1f} | {control} | {base:.1f} | {what} | {r['step']} | "
                         f"{minutes:.1f} |")
            print(lines[-1], flush=True)
    print("\n".join(lines))
    with open(f"{args.out}/results.json", "w") as f:
        json.dump(results, f, indent=1)
    return results


if __name__ == "__main__":
    main()
