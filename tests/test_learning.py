"""Does it learn? A short tiny pre-training on a default ShapesWorld, then short fine-tunings that must beat
their baselines and their image-blind controls (the README table is the long version). Slow: several minutes
on 2 CPU cores. These guard the learning itself: the fused half (ITM, the cross-attention Grad-CAM reads)
as well as ITC."""

from pathlib import Path

import pytest

from albef_lab.config import load_config
from albef_lab.data.export import WorldSettings, write_world
from albef_lab.eval.grounding import random_proposal_baseline
from albef_lab.eval.retrieval import chance_recall
from albef_lab.train import engine as E
from tests.helpers import metric_rows

pytestmark = pytest.mark.slow
# Budgets in steps, each measured to clear its test with room (2 cores, seed 42; each test's figures beside it or
# in its docstring, measured before the warm-up's gather was fixed unless they say so). The warm-up does not
# shrink: at 400 steps held-out shape was 51 %, at 600 74 % (72.9 with the fix; bar 50).
WARMUP_STEPS = 600  # the tiny recipe's image-encoder warm-up (3-6 minutes on 2 cores), then frozen
STEPS = 360  # held-out ITC R@1 text->image 10.8 % (bar 3.3); ITM 83.2 %, 80.2 against the hardest (with the fix)
FINISH_STEPS = 600  # the last ITM step (the recipe's 1000); hardest-negative lift +14.5 points here, +5 asked


@pytest.fixture(scope="module")
def pretrained(tmp_path_factory):
    root = tmp_path_factory.mktemp("learn")
    world = root / "world"
    write_world(WorldSettings(out=str(world), images=3000, seed=0, res=64), progress=False)
    run = root / "pretrain"
    cfg = load_config(None, [f"data.root={world}", f"train.output_dir={run}", f"train.max_steps={STEPS}",
                             "train.progress=false", f"train.eval_every={STEPS}", f"train.save_every={STEPS}",
                             "train.max_minutes=0", f"train.vision_warmup_steps={WARMUP_STEPS}",
                             f"train.itm_finish_steps={FINISH_STEPS}"], "tiny")
    return world, run, E.pretrain(cfg)


def finetune(world: Path, run: Path, out: Path, task: str, steps: int = 120, *extra: str) -> tuple[dict, object]:
    """Fine-tune from the pre-training in `run` (NLVR2 after its text assignment, as the paper)."""
    return E.finetune_tiny(task, world, out, run / "model.pth", steps, extra)


def test_pretraining_lifts_zero_shot_retrieval_to_ten_times_chance(pretrained):
    world, run, result = pretrained
    assert result["n_images"] == 300
    assert result["img_r1"] >= 10 * chance_recall(result["n_images"]), result
    values = [r["loss"] for r in metric_rows(run) if "loss" in r]
    assert sum(values[-3:]) < 0.8 * sum(values[:3])


def test_the_itm_head_learns_to_tell_held_out_pairs(pretrained):
    """The fused half learns: held-out ITM accuracy clearly above the 50 % of a constant answer (the original
    recipe sat at 50 % here), against the most ITC-similar false caption too (43-53 % before the warmed-up,
    frozen encoder: the fine distinctions need an encoder that sees shape), and the ITM loss below the constant
    guess for one positive and two negatives."""
    world, run, result = pretrained
    assert result["vision_warmup"]["held_out"]["shape"] > 50.0, result["vision_warmup"]
    assert result["itm_acc"] >= 60.0 and result["itm_acc_hard"] >= 58.0, result
    itm = [r["loss_itm"] for r in metric_rows(run) if "loss_itm" in r]
    assert sum(itm[-5:]) / 5 < 0.60, itm[-5:]  # 0.6365 = the constant guess


def test_the_last_itm_step_lifts_the_hardest_negative_accuracy_and_leaves_itc_alone(pretrained):
    """The tiny recipe's last step (`train.itm_finish_steps`: ITM alone on negatives mined over the whole training
    split) lifts the held-out accuracy against the most ITC-similar false caption clearly (69.5 -> 81.2 % in the
    default run), and ITC's retrieval stays exactly where pre-training left it (only the fused half trains)."""
    world, run, result = pretrained
    assert result["itm_finish"]["steps"] == FINISH_STEPS, result["itm_finish"]
    evals = [r for r in metric_rows(run) if "val_itm_acc_hard" in r]
    before, after = evals[-2], evals[-1]  # the last evaluation of pre-training, and the one after the step
    assert before["step"] == after["step"] == STEPS
    assert after["val_itm_acc_hard"] >= before["val_itm_acc_hard"] + 5.0, (before, after)
    for k in ("val_img_r1", "val_txt_r1", "val_r_mean"):
        assert after[k] == before[k], k


def test_itm_reranking_does_not_lower_retrieval(pretrained):
    """As in the paper, ITM re-ranks ITC's top-k: after a short retrieval fine-tuning, R@1 re-ranked is above
    ITC's own in both directions (by at least three of the 300 images)."""
    world, run, _ = pretrained
    # 40 steps: R@1 text->image 12.7 -> 20.2, image->text 26.3 -> 43.3
    result, _ = finetune(world, run, run.parent / "retrieval", "retrieval", 40, "data.k_test=16")
    for d in ("img", "txt"):
        assert result[f"{d}_r1"] >= result[f"itc_{d}_r1"] + 1.0, result


@pytest.mark.parametrize("task,metric,baseline_key,margin,steps", [
    ("ve", "acc", "majority_class_acc", 10.0, 60),  # 59.0 % (images shuffled 32.3)
    # after 60 steps of text assignment (with the fix): 66.0 % (shuffled 45.3); seeds 1, 2: 68.7 (55.3), 67.0 (52.0);
    # without it 54.0 (48.0), 57.7 (53.0), 52.3 (55.7): on the bar's edge
    ("nlvr", "acc", "majority_class_acc", 5.0, 120),
    ("vqa", "vqa_acc", "majority_answer_acc", 10.0, 120),  # 53.1 (blind 42.7); at 60 steps 45.4, blind 41.0
])
def test_finetuning_beats_the_baseline_and_the_image_blind_control(pretrained, tmp_path, task, metric,
                                                                   baseline_key, margin, steps):
    """Each task above its baseline *and* above the same model with the images shuffled: the score needs the
    image (the generator's text leaks once let SNLI-VE reach 69 % and NLVR2 70 % from the words alone)."""
    world, run, _ = pretrained
    result, cfg = finetune(world, run, tmp_path / task, task, steps)
    blind = E.evaluate(cfg, task, tmp_path / task / "model.pth", blind="shuffle")
    assert result[metric] > result[baseline_key] + margin, (result, result[baseline_key])
    assert result[metric] > blind[metric] + margin / 2, (result, blind)


def test_itm_and_itc_gradcam_ground_above_the_random_proposal(pretrained, tmp_path):
    """The paper's grounding: Grad-CAM of the ITM score on a cross-attention layer (the paper's third fusion layer;
    with fewer, the last but one), after weakly-supervised fine-tuning on (image, expression) pairs: at least
    twice the random proposal's accuracy. ITC Grad-CAM reads the image encoder's [CLS], which only grounding's
    fine-tuning moves (at 3x the lr: `TASK_OVERRIDES`): its best ViT block at least 3x the random proposal (54.4 %
    here against 16.1; 32.6 % at the other tasks' 0.1 of the lr, which would fail)."""
    world, run, _ = pretrained
    out = tmp_path / "grounding"
    result, cfg = finetune(world, run, out, "grounding", 60, "data.gradcam_mode=itm")  # 56.2 % (32.1)
    assert_twice_random_proposal(result, world)
    cfg.data.gradcam_mode, itc = "itc", []
    for block in range(cfg.model.vision.depth):
        cfg.data.gradcam_block = block
        itc.append(E.evaluate(cfg, "grounding", out / "model.pth")["acc_all"])
    baseline = random_proposal(world)
    assert max(itc) >= 3 * baseline, (itc, baseline)


def random_proposal(world: Path) -> float:
    return random_proposal_baseline(world / "grounding_test.json", world / "refcoco+")["acc_all"]


def assert_twice_random_proposal(result: dict, world: Path) -> None:
    baseline = random_proposal(world)
    assert result["acc_all"] >= 2 * baseline, (result, baseline)


def test_itm_gradcam_grounds_before_any_grounding_finetuning(pretrained, tmp_path):
    """The pre-trained fused half grounds by itself: ITM Grad-CAM of the pre-training checkpoint, no grounding
    steps, at least twice the random proposal (a fused half that never learned sat at chance, 15.9 against 16.1)."""
    world, run, _ = pretrained
    cfg = load_config(None, [f"data.root={world}", f"train.output_dir={tmp_path}", "train.progress=false",
                             "data.gradcam_mode=itm"], "tiny")
    result = E.evaluate(cfg, "grounding", run / "model.pth", out_dir=tmp_path)
    assert_twice_random_proposal(result, world)
