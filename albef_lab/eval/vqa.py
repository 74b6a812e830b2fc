"""VQA accuracy as the official VQA v2 evaluation defines it, and the answer-prior baseline.

The official score of an answer is not min(1, matches / 3) over all ten annotators: it is the mean, over
the ten ways of leaving one annotator out, of min(1, matches among the other nine / 3). So two matching
answers of ten score 0.6, not 2/3. Answers are compared after the official normalisation.
"""

from __future__ import annotations

import re
from collections import Counter

# The official evaluation's normalisation tables (number words to digits, articles dropped, a few
# contractions restored), written out here for ShapesWorld's and VQA v2's answers.
_DIGITS = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
           "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
_ARTICLES = {"a", "an", "the"}
_CONTRACTIONS = {"dont": "don't", "doesnt": "doesn't", "isnt": "isn't", "arent": "aren't", "cant": "can't",
                 "wont": "won't", "didnt": "didn't", "im": "i'm", "ive": "i've", "youre": "you're",
                 "its": "it's", "thats": "that's", "whats": "what's", "theres": "there's", "wasnt": "wasn't"}
_PUNCT = [";", "/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]
_PERIOD = re.compile(r"(?!<=\d)(\.)(?!\d)")
_COMMA_DIGIT = re.compile(r"(\d)(,)(\d)")


def _punctuation(text: str) -> str:
    out = text
    for p in _PUNCT:
        if (p + " " in text or " " + p in text) or re.search(_COMMA_DIGIT, text) is not None:
            out = out.replace(p, "")
        else:
            out = out.replace(p, " ")
    return _PERIOD.sub("", out)


def normalize_answer(answer: str) -> str:
    """The official answer normalisation: whitespace, punctuation, number words to digits, no articles."""
    text = _punctuation(answer.replace("\n", " ").replace("\t", " ").strip().lower())
    words = [_DIGITS.get(w, w) for w in text.split() if w not in _ARTICLES]
    return " ".join(_CONTRACTIONS.get(w, w) for w in words)


def vqa_accuracy(answer: str, annotators: list[str]) -> float:
    """Official VQA accuracy of one answer against its (ten) annotator answers, in [0, 1]."""
    if not annotators:
        raise ValueError("VQA accuracy needs the annotators' answers")
    gts = [a.replace("\n", " ").replace("\t", " ").strip() for a in annotators]
    pred = answer.replace("\n", " ").replace("\t", " ").strip()
    if len(set(gts)) > 1:  # as the official code: normalise only where annotators disagree
        gts, pred = [normalize_answer(a) for a in gts], normalize_answer(pred)
    scores = []
    for left_out in range(len(gts)):
        others = gts[:left_out] + gts[left_out + 1:]
        scores.append(min(1.0, sum(a == pred for a in others) / 3.0))
    return sum(scores) / len(scores)


def majority_answer_accuracy(entries: list[dict]) -> float:
    """VQA accuracy (percent) of always giving the most common answer of the split: the prior baseline."""
    labelled = [e["answer"] for e in entries if e.get("answer")]
    if not labelled:
        return 0.0
    top = Counter(a for answers in labelled for a in answers).most_common(1)[0][0]
    return 100.0 * sum(vqa_accuracy(top, answers) for answers in labelled) / len(labelled)
