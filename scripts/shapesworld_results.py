"""Fine-tune and evaluate every task on ShapesWorld from one pre-trained checkpoint; print the README table.

    python scripts/shapesworld_results.py --init runs/pretrain_tiny/model.pth [--steps 300] [--root data/shapesworld]
"""

from __future__ import annotations

import argparse
import json
import time

from albef_lab.config import load_config
from albef_lab.eval.grounding import random_proposal_baseline
from albef_lab.models.registry import task_spec
from albef_lab.train.engine import train

# task -> (metric shown, its baseline, how the baseline is defined)
ROWS = {
    "retrieval": ("img_r1", "text->image R@1 (ITC + ITM re-rank)", "chance 1/#images"),
    "vqa": ("vqa_acc", "VQA accuracy", "always the most common answer"),
    "nlvr": ("acc", "accuracy", "majority class"),
    "ve": ("acc", "accuracy (3-way)", "majority class"),
    "grounding": ("acc_all", "accuracy (IoU >= 0.5)", "random proposal"),
}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--init", required=True)
    ap.add_argument("--root", default="data/shapesworld")
    ap.add_argument("--steps", type=int, default=300)
    ap.add_argument("--out", default="runs/shapesworld_results")
    ap.add_argument("--tasks", nargs="+", default=list(ROWS))
    args = ap.parse_args()
    lines = ["| task | metric | albef-lab | baseline | baseline is | steps | minutes |",
             "|---|---|---|---|---|---|---|"]
    results = {}
    for task in args.tasks:
        cfg = load_config(None, [f"data.root={args.root}", f"train.output_dir={args.out}/{task}",
                                 f"train.max_steps={args.steps}", f"train.eval_every={args.steps}",
                                 f"train.save_every={args.steps}", "train.max_minutes=0", "train.warmup_steps=30",
                                 "train.lr=2e-4", "train.progress=false", "data.k_test=16",
                                 "model.fix_momentum_init=true"], "tiny")
        t0 = time.perf_counter()
        r = train(cfg, task, init=args.init)
        minutes = (time.perf_counter() - t0) / 60
        key, name, what = ROWS[task]
        if task == "retrieval":
            base = 100.0 / r["n_images"]
        elif task == "vqa":
            base = r["majority_answer_acc"]
        elif task in ("nlvr", "ve"):
            base = r["majority_class_acc"]
        else:
            base = random_proposal_baseline(f"{args.root}/{task_spec('grounding').files[1]}",
                                            f"{args.root}/refcoco+")["acc_all"]
        results[task] = {**r, "baseline": base}
        lines.append(f"| {task} | {name} | {r[key]:.1f} | {base:.1f} | {what} | {r['step']} | {minutes:.1f} |")
        print(lines[-1], flush=True)
    print("\n".join(lines))
    with open(f"{args.out}/results.json", "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
