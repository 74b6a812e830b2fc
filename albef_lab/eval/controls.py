"""What a guess that never looks at the image scores: the text-only priors that every learning claim stands beside.

The text-only guess answers each test sentence (question) with its most common label (answer) in training, and
with the most common one overall for a text never seen in training. A model that reads the text and ignores
the image can learn exactly this, so a score only shows that the image was used where it beats this guess.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable

from albef_lab.eval.vqa import vqa_accuracy


def text_only_guesses(train: list[dict], test: list[dict], key: str, labels: Callable[[dict], list]) -> list:
    """For each test entry, the label its text most often had in training (else the commonest label)."""
    by_text, overall = defaultdict(Counter), Counter()
    for e in train:
        by_text[e[key]].update(labels(e))
        overall.update(labels(e))
    top = overall.most_common(1)[0][0]
    return [by_text[e[key]].most_common(1)[0][0] if e[key] in by_text else top for e in test]


def text_only_accuracy(train: list[dict], test: list[dict], key: str = "sentence", label: str = "label") -> float:
    """Percent of test entries whose label the text-only guess gets right (SNLI-VE, NLVR2)."""
    guesses = text_only_guesses(train, test, key, lambda e: [e[label]])
    return 100.0 * sum(g == e[label] for g, e in zip(guesses, test, strict=True)) / len(test)


def vqa_text_only_accuracy(train: list[dict], test: list[dict]) -> float:
    """Official VQA accuracy (percent) of the better text-only guess: each question's commonest training answer,
    or (where the data names question types, as ShapesWorld's) each type's. A bag-of-words classifier of the
    question scores no better on ShapesWorld (docs/results.md)."""
    labelled = [e for e in test if e.get("answer")]
    keys = [k for k in ("question", "type") if all(k in e for e in train + labelled)]
    best = 0.0
    for key in keys:
        guesses = text_only_guesses(train, labelled, key, lambda e: e["answer"])
        best = max(best, sum(vqa_accuracy(g, e["answer"]) for g, e in zip(guesses, labelled, strict=True)))
    return 100.0 * best / len(labelled)
