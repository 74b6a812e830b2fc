"""Does it learn? A short tiny pre-training on a default ShapesWorld, then short fine-tunings that must beat
their baselines (the README table is the long version). Slow: a few minutes on 2 CPU cores."""

from pathlib import Path

import pytest

from albef_lab.config import load_config
from albef_lab.data.export import WorldSettings, write_world
from albef_lab.eval.grounding import random_proposal_baseline
from albef_lab.eval.retrieval import chance_recall
from albef_lab.train import engine as E
from tests.helpers import metric_rows

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("learn")
    world = root / "world"
    write_world(WorldSettings(out=str(world), images=3000, seed=0, res=64), progress=False)
    run = root / "pretrain"
    cfg = load_config(None, [f"data.root={world}", f"train.output_dir={run}", "train.max_steps=560",
                             "train.progress=false", "train.eval_every=560", "train.save_every=560",
                             "train.max_minutes=0"], "tiny")
    return world, run, E.pretrain(cfg)


def test_pretraining_lifts_zero_shot_retrieval_to_ten_times_chance(pretrained):
    world, run, result = pretrained
    assert result["n_images"] == 300
    assert result["img_r1"] >= 10 * chance_recall(result["n_images"]), result
    values = [r["loss"] for r in metric_rows(run) if "loss" in r]
    assert sum(values[-3:]) < 0.8 * sum(values[:3])


@pytest.mark.parametrize("task,metric,baseline_key,margin", [
    ("ve", "acc", "majority_class_acc", 10.0),
    ("nlvr", "acc", "majority_class_acc", 5.0),
    ("vqa", "vqa_acc", "majority_answer_acc", 10.0),
    ("grounding", "acc_all", None, 5.0),
])
def test_finetuning_beats_the_baseline(pretrained, tmp_path, task, metric, baseline_key, margin):
    world, run, _ = pretrained
    extra = ["data.gradcam_mode=itc", "data.gradcam_block=-2"] if task == "grounding" else []
    cfg = load_config(None, [f"data.root={world}", f"train.output_dir={tmp_path / task}", "train.max_steps=120",
                             "train.progress=false", "train.eval_every=120", "train.save_every=120",
                             "train.max_minutes=0", "train.warmup_steps=20", "train.lr=3e-4",
                             "model.fix_momentum_init=true", *extra], "tiny")
    result = E.train(cfg, task, init=str(Path(run) / "model.pth"))
    if baseline_key is None:
        baseline = random_proposal_baseline(world / "grounding_test.json", world / "refcoco+")["acc_all"]
    else:
        baseline = result[baseline_key]
    assert result[metric] > baseline + margin, (result, baseline)
