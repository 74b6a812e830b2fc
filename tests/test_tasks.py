"""Downstream tasks: fine-tuning runs through the engine, evaluation metrics, Grad-CAM grounding."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from albef_lab.cli import main
from albef_lab.eval.grounding import best_proposal, iou_xywh, random_proposal_baseline
from albef_lab.eval.retrieval import recall_metrics
from albef_lab.eval.vqa import normalize_answer, vqa_accuracy
from albef_lab.models.tasks import ALBEFRetrieval
from albef_lab.shapesworld import load_config
from albef_lab.shapesworld.export import WorldSettings, write_world
from albef_lab.train import engine as E
from albef_lab.train.tasks import TASKS, VETask, task_class
from albef_lab.viz.gradcam import itc_gradcam, itm_gradcam
from tests.helpers import SMALL, batch, load_module, metric_rows, small_config


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("w")
    write_world(WorldSettings(out=str(out), images=30, seed=4, res=32, workers=1), progress=False)
    return out


def brute_recall(scores: np.ndarray, txt2img: list[int], k: int):
    n_img, n_txt = scores.shape
    tr = np.mean([min(np.where(np.argsort(-scores[i]) == t)[0][0] for t in range(n_txt) if txt2img[t] == i) < k
                  for i in range(n_img)])
    ir = np.mean([np.where(np.argsort(-scores[:, t]) == txt2img[t])[0][0] < k for t in range(n_txt)])
    return 100 * tr, 100 * ir


def test_recall_matches_the_original_definition():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(7, 21, generator=g)
    txt2img = torch.arange(7).repeat_interleave(3)
    m = recall_metrics(scores, txt2img)
    for k in (1, 5, 10):
        tr, ir = brute_recall(scores.numpy(), txt2img.tolist(), k)
        assert m[f"txt_r{k}"] == pytest.approx(tr) and m[f"img_r{k}"] == pytest.approx(ir)
    perfect = recall_metrics(torch.eye(7).repeat_interleave(3, dim=1), txt2img)
    assert perfect["txt_r1"] == perfect["img_r1"] == 100.0


def test_vqa_accuracy_is_the_official_leave_one_out_mean():
    ann = ["red"] * 2 + ["blue"] * 8
    assert vqa_accuracy("blue", ann) == 1.0
    assert vqa_accuracy("red", ann) == pytest.approx(0.6)  # not min(1, 2/3): the mean over the 10 subsets of 9
    assert vqa_accuracy("green", ann) == 0.0
    assert vqa_accuracy("blue", ["red"] * 7 + ["blue"] * 3) == pytest.approx(0.9)  # 3 of 10: 7 x 1 + 3 x 2/3
    # the official normalisation where annotators disagree: number words, articles, case, punctuation
    assert vqa_accuracy("Two.", ["2"] * 9 + ["3"]) == 1.0
    assert vqa_accuracy("the circle", ["circle"] * 5 + ["square"] * 5) == 1.0
    assert normalize_answer("  The Yes!\n") == "yes"
    with pytest.raises(ValueError, match="annotators"):
        vqa_accuracy("red", [])


def test_proposal_ranking_and_iou():
    heat = torch.zeros(10, 10)
    heat[2:5, 6:9] = 1.0
    dets = [[0, 0, 10, 10, 0.9], [6, 2, 3, 3, 0.5], [0, 0, 3, 3, 0.8]]
    assert best_proposal(heat, dets) == [6, 2, 3, 3]
    # the original counts whole pixels: [0, 0, 3, 3] covers pixels 0..2, so the overlap with [1, 1, 3, 3] is 2 x 2
    assert iou_xywh([0, 0, 3, 3], [1, 1, 3, 3]) == pytest.approx(4 / 14)
    assert iou_xywh([0, 0, 2, 2], [1, 1, 2, 2]) == 0.0  # one shared pixel is no overlap for the original
    assert best_proposal(torch.zeros(10, 10), dets) is None  # nothing scores above 0: no box


def test_gradcam_maps_have_the_patch_grid_and_respond_to_the_image():
    torch.manual_seed(0)
    model = ALBEFRetrieval(small_config())
    image, ids, mask = batch(b=2, res=32)
    maps = itm_gradcam(model, image, ids, mask, layer=2)
    assert maps.shape == (2, 2, 2) and (maps >= 0).all() and maps.sum() > 0
    assert maps.flatten(1).std(1).min() > 0  # not a constant map
    assert not torch.allclose(maps, itm_gradcam(model, image.flip(0), ids, mask, layer=2))  # follows the image
    assert not torch.allclose(maps, itm_gradcam(model, image, ids.flip(0), mask.flip(0), layer=2))  # and the text
    per_token = itm_gradcam(model, image, ids, mask, layer=3, per_token=True)
    assert per_token.shape == (2, ids.shape[1], 2, 2)
    assert itc_gradcam(model, image, ids, mask).shape == (2, 2, 2)
    with pytest.raises(ValueError, match="no cross-attention"):
        itm_gradcam(model, image, ids, mask, layer=0)
    assert not any(p.grad is not None for p in model.parameters())  # maps are per call: no parameter gradient


@pytest.fixture(scope="module")
def pre(world, tmp_path_factory) -> Path:
    """One small pre-training that every task starts from."""
    out = tmp_path_factory.mktemp("pre")
    E.pretrain(load_config(None, [*SMALL, f"data.root={world}", f"train.output_dir={out}", "train.max_steps=2",
                                  "model.decoder_layers=1"], "tiny"))
    return out / "model.pth"


@pytest.mark.parametrize("task", sorted(TASKS))
def test_every_registered_task_builds_trains_saves_loads_strictly_and_evaluates(world, pre, tmp_path, task):
    """As timm's test over every registered model: each task in the registry, from a pre-trained file where it
    fine-tunes (as the original's scripts map it), two steps, saved, read back strictly, evaluated again."""
    from albef_lab.models.factory import load_model

    out = tmp_path / task
    cfg = load_config(None, [*SMALL, f"data.root={world}", f"train.output_dir={out}", "train.max_steps=2",
                             "model.decoder_layers=1", "data.k_test=4"], "tiny")
    if task == "nlvr":  # NLVR2 starts from text-assignment pre-training in the original; here straight from ALBEF
        cfg.model.fix_momentum_init = True
    trainer = E.Trainer(cfg, task, init=None if task == "pretrain" else str(pre))
    if task != "pretrain":
        pretrained = torch.load(pre, weights_only=True)["model"]
        for key in ("visual_encoder.blocks.0.attn.qkv.weight", "visual_encoder.pos_embed"):
            assert torch.equal(trainer.model.state_dict()[key], pretrained[key]), key  # --init loaded the weights
    result = trainer.run()
    assert result["step"] == 2
    rows = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert any("loss" in r for r in rows) and any(any(k.startswith("val_") for k in r) for r in rows)
    primary = task_class(task).primary
    assert 0.0 <= result[primary] <= 100.0
    model, _, report = load_model(out / "model.pth")  # strict: every key of the task's model, nothing else
    assert report.clean and type(model) is type(trainer.model)
    saved = torch.load(out / "model.pth", weights_only=True)["model"]
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in saved.items())
    again = E.evaluate(cfg, task, out / "model.pth")
    assert again[primary] == pytest.approx(result[primary], abs=1e-6)
    if task == "retrieval":  # the image states re-encoded chunk by chunk give the same recall
        from albef_lab.eval.retrieval import StreamedImageStates

        chunks, real = [], StreamedImageStates.__getitem__
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(StreamedImageStates, "__getitem__", lambda self, i: chunks.append(i) or real(self, i))
            cfg.data.stream_images = True
            assert E.evaluate(cfg, task, out / "model.pth") == pytest.approx(again, abs=1e-6)
        assert chunks  # the evaluation asked for its image states chunk by chunk
    if task == "vqa":
        answers = json.loads((out / "vqa_result.json").read_text())
        assert answers and set(answers[0]) == {"question_id", "answer"}


def test_evaluate_cli_on_a_finetuned_checkpoint(world, tmp_path, capsys, monkeypatch):
    out = tmp_path / "ve"
    E.train(load_config(None, [*SMALL, f"data.root={world}", f"train.output_dir={out}", "train.max_steps=1"],
                        "tiny"), "ve")
    capsys.readouterr()
    seen = {}
    real = VETask.evaluate

    def spy(self, model, device):
        seen.update(model.state_dict())
        return real(self, model, device)

    monkeypatch.setattr(VETask, "evaluate", spy)
    assert main(["evaluate", "ve", "--checkpoint", str(out / "model.pth"), f"data.root={world}"]) == 0
    metrics = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert set(metrics) == {"acc", "majority_class_acc", "text_only_acc"}
    saved = torch.load(out / "model.pth", weights_only=True)["model"]
    assert set(seen) == set(saved) and all(torch.equal(seen[k], saved[k]) for k in saved)  # the file's weights


def test_zero_shot_evaluation_of_a_pretraining_file_warns_about_the_image_size(world, tmp_path, capsys):
    pre = tmp_path / "pre"
    E.pretrain(load_config(None, [*SMALL, f"data.root={world}", f"train.output_dir={pre}", "train.max_steps=1"],
                           "tiny"))
    official = tmp_path / "ALBEF.pth"
    torch.save({"model": torch.load(pre / "model.pth", weights_only=True)["model"]}, official)  # no config inside
    capsys.readouterr()
    args = ["evaluate", "retrieval", "--checkpoint", str(official), "--preset", "tiny", *SMALL,
            "model.vision.image_res=48", f"data.root={world}", "data.k_test=4"]
    assert main(args) == 0
    out, err = capsys.readouterr()
    assert "missing (1): idx_queue" in out and "warning" in err and "48 px" in err
    assert "r_mean" in json.loads(out.strip().splitlines()[-1])


def test_random_proposal_baseline_is_a_probability(world):
    base = random_proposal_baseline(world / "grounding_test.json", world / "refcoco+")
    assert 0 < base["acc_all"] < 100


def test_the_results_script_prints_each_score_beside_its_control(world, tmp_path, capsys):
    """scripts/shapesworld_results.py (the README's table): the recipe's steps, each score beside its image-blind
    control and baseline, in the printed table and in results.json; NLVR2 starts from its text assignment."""
    pre = tmp_path / "pre"
    E.pretrain(load_config(None, [*SMALL, f"data.root={world}", f"train.output_dir={pre}", "train.max_steps=2",
                                  "model.decoder_layers=1"], "tiny"))
    script = load_module(Path(__file__).resolve().parent.parent / "scripts" / "shapesworld_results.py")
    out = tmp_path / "results"
    results = script.main(["--init", str(pre / "model.pth"), "--root", str(world), "--out", str(out), "--steps", "3",
                           "--tasks", "ve", "grounding", "nlvr", "--text-assignment-steps", "2", "--set", *SMALL,
                           "model.decoder_layers=1", "data.k_test=4"])
    ve, grounding = results["ve"], results["grounding"]
    assert ve["step"] == grounding["step"] == results["nlvr"]["step"] == 3
    assert ve["baseline"] == ve["majority_class_acc"] and 0 <= ve["blind"]["acc"] <= 100
    assert grounding["baseline"] == random_proposal_baseline(world / "grounding_test.json",
                                                             world / "refcoco+")["acc_all"]
    printed = capsys.readouterr().out
    assert (f"| ve | accuracy (3-way) | {ve['acc']:.1f} | {ve['blind']['acc']:.1f} | {ve['baseline']:.1f} | "
            "majority class | 3 |") in printed
    assert "| grounding | accuracy, ITM Grad-CAM" in printed
    ta = out / "nlvr" / "text_assignment"
    assert [r["step"] for r in metric_rows(ta) if "val_ta_acc" in r] == [2]
    assert f"initialised nlvr from {ta / 'model.pth'}" in printed
    assert json.loads((out / "results.json").read_text())["ve"]["acc"] == ve["acc"]
