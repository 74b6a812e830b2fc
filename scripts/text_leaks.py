"""How much of SNLI-VE, NLVR2 and VQA a reader of the text alone gets right on a ShapesWorld folder.

    python scripts/text_leaks.py data/shapesworld

The text-only guess (`albef_lab.eval.controls`): each test sentence's (question's) most common label (answer) in
training, the overall most common one for sentences never seen; for VQA also each question type's. Beside it: the
majority label.
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

from albef_lab.eval.controls import text_only_accuracy, vqa_text_only_accuracy
from albef_lab.eval.vqa import majority_answer_accuracy


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", nargs="?", default="data/shapesworld")
    root = Path(ap.parse_args().root)

    def load(name: str) -> list[dict]:
        return json.loads((root / name).read_text())

    for task, name in (("ve", "SNLI-VE"), ("nlvr", "NLVR2")):
        train, test = load(f"{task}_train.json"), load(f"{task}_test.json")
        top = Counter(e["label"] for e in train).most_common(1)[0][0]
        majority = 100 * sum(e["label"] == top for e in test) / len(test)
        print(f"{name + ':':<8} text-only {text_only_accuracy(train, test):.1f} %, majority class {majority:.1f} %")
    train, test = load("vqa_train.json"), load("vqa_test.json")
    print(f"VQA:     text-only {vqa_text_only_accuracy(train, test):.1f}, majority answer "
          f"{majority_answer_accuracy(test):.1f} (official VQA accuracy)")


if __name__ == "__main__":
    main()
