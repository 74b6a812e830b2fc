"""How much of SNLI-VE, NLVR2 and VQA a reader of the text alone gets right on a ShapesWorld folder.

    python scripts/text_leaks.py data/shapesworld

The text-only guess: each test sentence's (question's) most common label (answer) in training, the overall
most common one for sentences never seen. Beside it: the majority label, and for VQA the most common answer
of each question type (the prior a text-only model may legitimately learn: a colour question has a colour).
"""

from __future__ import annotations

import argparse
import json
from collections import Counter, defaultdict
from pathlib import Path

from albef_lab.eval.vqa import vqa_accuracy


def text_only(train: list[dict], test: list[dict], key: str, label) -> tuple[float, float]:
    """(text-only accuracy, majority-label accuracy) in percent."""
    by_text, overall = defaultdict(Counter), Counter()
    for e in train:
        by_text[e[key]][label(e)] += 1
        overall[label(e)] += 1
    top = overall.most_common(1)[0][0]
    guess = [by_text[e[key]].most_common(1)[0][0] if e[key] in by_text else top for e in test]
    return (100 * sum(g == label(e) for g, e in zip(guess, test, strict=True)) / len(test),
            100 * sum(top == label(e) for e in test) / len(test))


def vqa_text_only(train: list[dict], test: list[dict]) -> dict[str, float]:
    by_question, by_type = defaultdict(Counter), defaultdict(Counter)
    for e in train:
        by_question[e["question"]].update(e["answer"])
        by_type[e["type"]].update(e["answer"])
    top = Counter(a for e in train for a in e["answer"]).most_common(1)[0][0]
    score = Counter()
    for e in test:
        guess = by_question[e["question"]].most_common(1)[0][0] if e["question"] in by_question else top
        score["text-only"] += vqa_accuracy(guess, e["answer"])
        score["type prior"] += vqa_accuracy(by_type[e["type"]].most_common(1)[0][0], e["answer"])
        score["majority answer"] += vqa_accuracy(top, e["answer"])
    return {k: 100 * v / len(test) for k, v in score.items()}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("root", nargs="?", default="data/shapesworld")
    root = Path(ap.parse_args().root)

    def load(name: str) -> list[dict]:
        return json.loads((root / name).read_text())

    ve = text_only(load("ve_train.json"), load("ve_test.json"), "sentence", lambda e: e["label"])
    nlvr = text_only(load("nlvr_train.json"), load("nlvr_test.json"), "sentence", lambda e: e["label"])
    print(f"SNLI-VE: text-only {ve[0]:.1f} %, majority class {ve[1]:.1f} %")
    print(f"NLVR2:   text-only {nlvr[0]:.1f} %, majority class {nlvr[1]:.1f} %")
    vqa = vqa_text_only(load("vqa_train.json"), load("vqa_test.json"))
    print("VQA:     " + ", ".join(f"{k} {v:.1f}" for k, v in vqa.items()) + " (official VQA accuracy)")


if __name__ == "__main__":
    main()
