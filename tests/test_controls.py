"""The controls a learning claim stands beside, each against a count made by hand on a case small enough to
count: chance recall, a random proposal, a map on a random object, the text-blind expressions, text-only guesses."""

import itertools
import json

import pytest
import torch

from albef_lab.eval.controls import text_only_accuracy, vqa_by_type, vqa_text_only_accuracy
from albef_lab.eval.grounding import other_objects_texts, random_object_baseline, random_proposal_baseline
from albef_lab.eval.retrieval import chance_recall, recall_metrics


def test_chance_recall_is_the_mean_recall_of_every_ranking():
    n = 4
    txt2img = torch.arange(n)  # one text per image
    rows = []
    for perm in itertools.permutations(range(n)):  # every ranking of the images, each equally likely
        scores = torch.tensor([[float(n - perm.index(i)) for i in range(n)]] * n).t()  # same order for every text
        rows.append(recall_metrics(scores, txt2img, ks=(1, 2)))
    for k in (1, 2):
        assert sum(r[f"img_r{k}"] for r in rows) / len(rows) == pytest.approx(chance_recall(n, k)) == 100 * k / n
    assert chance_recall(300) == pytest.approx(100 / 300) and chance_recall(3, 5) == 100.0


@pytest.fixture
def refer(tmp_path):
    """Two images of 100 x 50 px. Image 1: objects A (left) and B (right); image 2: object C alone."""
    A, B, C = [5, 5, 30, 30], [60, 10, 30, 30], [40, 10, 20, 20]
    anns = [{"id": 1, "image_id": 1, "bbox": A}, {"id": 2, "image_id": 1, "bbox": B},
            {"id": 3, "image_id": 2, "bbox": C}]
    images = [{"id": i, "height": 50, "width": 100, "file_name": f"{i}.png"} for i in (1, 2)]
    refs = [{"ref_id": 10, "image_id": 1, "ann_id": 1, "split": "testA"},
            {"ref_id": 11, "image_id": 1, "ann_id": 2, "split": "testA"},
            {"ref_id": 12, "image_id": 2, "ann_id": 3, "split": "testB"}]
    dets = {"1": [[*A, 1.0], [*B, 1.0], [0, 0, 100, 50, 1.0], [40, 0, 20, 20, 1.0]],  # A, B, the whole, background
            "2": [[*C, 1.0], [38, 8, 22, 22, 1.0], [0, 0, 10, 10, 1.0]]}  # C, a box close to C, background
    d = tmp_path / "refcoco+"
    d.mkdir()
    (d / "refs.json").write_text(json.dumps(refs))
    (d / "instances.json").write_text(json.dumps({"images": images, "annotations": anns}))
    (d / "dets.json").write_text(json.dumps(dets))
    entries = [{"image": "1.png", "text": "the left shape", "ref_id": 10},
               {"image": "1.png", "text": "the right shape", "ref_id": 11},
               {"image": "2.png", "text": "the only shape", "ref_id": 12}]
    (tmp_path / "test.json").write_text(json.dumps(entries))
    return tmp_path / "test.json", d, entries


def test_random_proposal_and_random_object_by_hand(refer):
    ann, d, _ = refer
    # A and B: 1 of 4 proposals overlaps each by IoU >= 0.5; C: 2 of 3 (itself and the box close to it)
    prop = random_proposal_baseline(ann, d)
    assert prop["acc_testA"] == pytest.approx(25.0) and prop["acc_testB"] == pytest.approx(200 / 3)
    assert prop["acc_all"] == pytest.approx((25 + 25 + 200 / 3) / 3)
    # heating A picks A's proposal, heating B picks B's: one of the image's two objects is right; C is alone
    obj = random_object_baseline(ann, d)
    assert obj["acc_testA"] == pytest.approx(50.0) and obj["acc_testB"] == pytest.approx(100.0)
    assert obj["acc_all"] == pytest.approx(200 / 3)


def test_the_text_blind_expressions_name_another_object(refer):
    _, _, entries = refer
    swapped = other_objects_texts(entries)
    assert swapped[10] == "the right shape" and swapped[11] == "the left shape"
    assert swapped[12] in ("the left shape", "the right shape")  # a one-object image borrows another's


def test_text_only_guesses_by_hand():
    train = [{"sentence": "s1", "label": "a"}, {"sentence": "s1", "label": "a"}, {"sentence": "s1", "label": "b"},
             {"sentence": "s2", "label": "b"}, {"sentence": "s3", "label": "b"}]
    test = [{"sentence": "s1", "label": "a"}, {"sentence": "s2", "label": "a"}, {"sentence": "new", "label": "b"},
            {"sentence": "s1", "label": "b"}]
    # s1 -> a (right, wrong), s2 -> b (wrong), unseen -> the commonest label b (right)
    assert text_only_accuracy(train, test) == 50.0
    vqa_train = [{"question": "q1", "answer": ["red"] * 10, "type": "colour"},
                 {"question": "q2", "answer": ["blue"] * 10, "type": "colour"},
                 {"question": "q2", "answer": ["blue"] * 10, "type": "colour"}]
    vqa_test = [{"question": "q1", "answer": ["red"] * 10, "type": "colour"},
                {"question": "q3", "answer": ["red"] * 10, "type": "colour"}]
    # per question: red (1.0), unseen -> blue (0.0) = 50 %; per type: colour -> blue = 0 %; the better one
    assert vqa_text_only_accuracy(vqa_train, vqa_test) == 50.0


def test_vqa_by_type_by_hand():
    train = [{"question": "what color is the circle", "answer": ["red"] * 10, "type": "colour"},
             {"question": "how many shapes are there", "answer": ["2"] * 10, "type": "count"},
             {"question": "how many shapes are there", "answer": ["2"] * 10, "type": "count"}]
    test = [{"question_id": 1, "question": "what color is the circle", "answer": ["blue"] * 10, "type": "colour"},
            {"question_id": 2, "question": "what color is the circle", "answer": ["red"] * 7 + ["blue"] * 3,
             "type": "colour"},
            {"question_id": 3, "question": "how many shapes are there", "answer": ["3"] * 10, "type": "count"},
            {"question_id": 4, "question": "is there a star", "answer": ["no"] * 10}]  # no type: not counted
    rows = vqa_by_type(train, test, {1: "blue", 2: "blue", 3: "2", 4: "no"})
    assert list(rows) == ["colour", "count"]
    # colour: "blue" is 1.0 on q1 and 0.9 on q2 (3 of 10 annotators: over the ten 9-annotator subsets, 7 keep all
    # three (1.0) and 3 keep two (2/3)); the guess "red": 0 on q1, 1.0 on q2
    assert rows["colour"] == {"acc": 95.0, "text_only": 50.0, "n": 2}
    assert rows["count"] == {"acc": 0.0, "text_only": 0.0, "n": 1}


def test_the_random_recall_bar_is_passed_by_random_scores_as_often_as_its_quantile_says():
    """Random score matrices, counted by `recall_metrics` itself, pass the 0.9 quantile about 10 % of the time."""
    import numpy as np

    from albef_lab.eval.controls import random_mean_recall

    n, t = 10, 3
    bar = random_mean_recall(n, t, 0.9)
    rng = np.random.default_rng(5)
    means = []
    for _ in range(1000):
        r = recall_metrics(torch.from_numpy(rng.random((n, n * t))), torch.arange(n).repeat_interleave(t))
        means.append((r["txt_r_mean"] + r["img_r_mean"]) / 2)
    assert 0.07 < np.mean(np.array(means) > bar) < 0.13
