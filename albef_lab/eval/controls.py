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


def vqa_by_type(train: list[dict], test: list[dict], predicted: dict) -> dict[str, dict]:
    """Per question type (where the data names types, as ShapesWorld's): the model's VQA accuracy on that type's
    questions, the text-only guess's on the same questions, and how many there are. `predicted`: question_id ->
    answer."""
    labelled = [e for e in test if e.get("answer") and "type" in e]
    out = {}
    for kind in sorted({e["type"] for e in labelled}):
        mine = [e for e in labelled if e["type"] == kind]
        acc = sum(vqa_accuracy(predicted[e["question_id"]], e["answer"]) for e in mine if e["question_id"] in predicted)
        out[kind] = {"acc": 100.0 * acc / len(mine), "text_only": vqa_text_only_accuracy(train, mine), "n": len(mine)}
    return out


def random_mean_recall(n_images: int, texts_per_image: int, quantile: float, draws: int = 5000,
                       seed: int = 0) -> float:
    """The `quantile` of the mean of R@1/5/10 in both directions (percent) that random scores reach on a split of
    `n_images` images with `texts_per_image` captions each (text t of image t // texts_per_image), as
    `recall_metrics` counts them: a bar that chance passes 1 - quantile of the time."""
    import numpy as np

    rng = np.random.default_rng(seed)
    n, t = n_images, texts_per_image
    means, own = [], np.arange(n * t) // t
    for start in range(0, draws, 100):
        s = rng.random((min(100, draws - start), n, n * t))  # [draw, image, text]
        pos_t = s[:, own, np.arange(n * t)]  # each text's score with its own image
        t2i = (s > pos_t[:, None, :]).sum(1)  # images above it, per text
        best = s.reshape(len(s), n, n, t)[:, np.arange(n), np.arange(n)].max(-1)  # each image's best own caption
        i2t = (s > best[:, :, None]).sum(2)  # captions above it, per image
        means.append(sum(100 * (t2i < k).mean(1) + 100 * (i2t < k).mean(1) for k in (1, 5, 10)) / 6)
    return float(np.quantile(np.concatenate(means), quantile))
