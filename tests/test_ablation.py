"""The ablation variants, the sweep's order and the summary (fast); the MoD-on-ITC-only switch."""

import math

import pytest
import torch
from helpers import batch, small_config

from albef_lab.models.albef import ALBEF, PretrainDraws
from albef_lab.objectives.mlm import draw_mask
from albef_lab.shapesworld import load_config
from albef_lab.shapesworld.ablation import (
    COLUMNS,
    ROW_NAMES,
    VARIANTS,
    Budget,
    grid,
    mean_std,
    summarize,
    table_markdown,
    write_summary,
)


def test_variants_are_the_rows_of_table_1():
    flags = {}
    for name, v in VARIANTS.items():
        m = load_config(None, list(v.pretrain), "tiny").model
        ft = load_config(None, list(v.finetune), "tiny").model
        flags[name] = (m.use_itc, m.hard_negatives, m.distill, m.distill_mlm, ft.distill)
    assert flags == {
        "mlm_itm": (False, False, False, True, False),
        "itc": (True, False, False, True, False),
        "itc_hardneg": (True, True, False, True, False),
        "itc_mod": (True, True, True, False, False),
        "full": (True, True, True, True, False),
        "full_mod_ft": (True, True, True, True, True),
    }
    assert all(load_config(None, list(v.pretrain), "tiny").model.use_itm for v in VARIANTS.values())


def test_grid_keeps_runs_sharing_a_pretraining_apart():
    runs = grid(list(VARIANTS), [0.0, 0.4], [0, 1])
    assert len(runs) == 24 and len({r.name for r in runs}) == 24
    per_block = [r.variant for r in runs[:6]]
    assert per_block[0] == "full" and per_block[-1] == "full_mod_ft"
    with pytest.raises(ValueError, match="unknown variant"):
        grid(["full", "fancy"], [0.0], [0])


def _result(variant, noise, seed, score):
    scores = {c: score + i for i, c in enumerate(COLUMNS)}
    return {"variant": variant, "noise": noise, "seed": seed, "scores": scores,
            "baselines": {c: 10.0 for c in COLUMNS}}


def test_summary_is_mean_and_std_over_seeds(tmp_path):
    results = [_result("itc", 0.0, 0, 50.0), _result("itc", 0.0, 1, 54.0), _result("full", 0.0, 0, 60.0),
               _result("full", 0.4, 0, 40.0)]
    table = summarize(results)
    assert list(table) == [0.0, 0.4]
    assert list(table[0.0]) == ["itc", "full", "baseline"]  # Table 1 order, baseline last
    mean, std, n = table[0.0]["itc"]["TR"]
    assert (mean, n) == (52.0, 2) and std == pytest.approx(math.sqrt(8.0))
    assert table[0.0]["itc"]["IR"][0] == 53.0
    assert table[0.0]["full"]["TR"][1] == 0.0
    text = table_markdown(table)
    assert "caption noise 0.4" in text and "| + ITC | 2 | 52.0 ± 2.8 |" in text
    assert all(math.isnan(x) for x in mean_std([]))  # nan for nothing: never a made-up number

    import json

    for r in results:
        d = tmp_path / "runs" / f"{r['variant']}_noise{r['noise']:g}_seed{r['seed']}"
        d.mkdir(parents=True)
        (d / "results.json").write_text(json.dumps(r))
    (tmp_path / "runs" / "broken_noise0_seed0").mkdir()
    (tmp_path / "runs" / "broken_noise0_seed0" / "error.txt").write_text("ValueError: boom")
    md = write_summary(tmp_path)
    assert md == text
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["runs"] == 4 and saved["failed"] == ["broken_noise0_seed0"]
    assert (tmp_path / "noise.png").stat().st_size > 1000


def test_summary_adds_the_image_blind_control_row():
    results = [_result("itc", 0.0, 0, 50.0), _result("full", 0.0, 0, 60.0), _result("full", 0.4, 0, 40.0)]
    results[0]["blind"] = {"TR": 4.0, "SNLI-VE": 33.0}
    results[1]["blind"] = {"TR": 6.0, "SNLI-VE": 35.0}
    table = summarize(results)
    assert list(table[0.0]) == ["itc", "full", "blind", "baseline"]
    assert table[0.0]["blind"]["TR"][:2] == (5.0, pytest.approx(math.sqrt(2.0)))
    assert math.isnan(table[0.0]["blind"]["IR"][0])  # no control recorded: no number
    assert "blind" not in table[0.4]  # runs without controls get no row
    assert f"| {ROW_NAMES['blind']} | 2 | 5.0 ± 1.4 |" in table_markdown(table)


def test_quick_budget_is_smaller():
    q, d = Budget.quick(), Budget()
    assert q.pretrain_steps < d.pretrain_steps and q.world_images < d.world_images


def _mlm_loss(alpha, **flags):
    torch.manual_seed(0)
    model = ALBEF(small_config(**flags))
    image, ids, mask = batch()
    draws = PretrainDraws(neg_image_idx=torch.tensor([1, 0, 3, 2]), neg_text_idx=torch.tensor([2, 3, 0, 1]),
                          mask=draw_mask(ids.shape, 0.5, 120, torch.Generator().manual_seed(1)))
    return model(image, ids, mask, alpha, draws=draws)


def test_mod_on_itc_only_leaves_mlm_undistilled():
    """distill_mlm=false: the MLM loss is the plain one (as without MoD), while ITC is still distilled."""
    itc_only = _mlm_loss(0.4, distill=True, distill_mlm=False)
    none = _mlm_loss(0.4, distill=False)
    full = _mlm_loss(0.4, distill=True)
    assert torch.allclose(itc_only["loss_mlm"], none["loss_mlm"])
    assert not torch.allclose(full["loss_mlm"], none["loss_mlm"])
    assert torch.allclose(itc_only["loss_ita"], full["loss_ita"])
    assert not torch.allclose(itc_only["loss_ita"], none["loss_ita"])


def test_plot_metrics_leaves_the_callers_backend_alone(tmp_path):
    """A notebook's inline backend must survive drawing the curves (else its later figures never show)."""
    import json

    import matplotlib

    from albef_lab.train.plot import plot_metrics

    rows = [{"step": s, "loss": 1.0 / s, "lr": 1e-3, "alpha": 0.4} for s in range(1, 4)]  # a downstream run's log
    (tmp_path / "metrics.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    matplotlib.use("svg")
    try:
        assert plot_metrics(tmp_path).stat().st_size > 1000
        assert matplotlib.get_backend() == "svg"
    finally:
        matplotlib.use("Agg")


def _vision(path):
    from albef_lab.models.checkpoint import read_file, state_dict_of

    sd = state_dict_of(read_file(path), str(path))
    prefix = "visual_encoder." if any(k.startswith("visual_encoder.") for k in sd) else ""
    return {k.removeprefix(prefix): v for k, v in sd.items() if k.startswith(prefix) and "_m." not in k}


def test_a_seeds_warmed_encoder_is_made_once_and_pretraining_keeps_it_frozen(tmp_path):
    """One warm-up per seed serves every noise level (same images); pre-training loads it and leaves it as it was;
    `warmup_steps=0` is the scratch encoder of the first table (docs/ablation_scratch_encoder.md)."""
    from dataclasses import replace

    from albef_lab.shapesworld.ablation import pretrain_variant, warmed_encoder

    budget = Budget.quick()
    path, record = warmed_encoder(0.0, 0, tmp_path, budget)
    stamp = path.stat().st_mtime_ns
    assert record["steps"] == budget.warmup_steps
    assert warmed_encoder(0.4, 0, tmp_path, budget)[0] == path and path.stat().st_mtime_ns == stamp
    assert warmed_encoder(0.0, 1, tmp_path, budget)[0] != path

    checkpoint, zero_shot = pretrain_variant("itc", 0.0, 0, tmp_path, budget)
    assert zero_shot["vision_warmup"]["file"] == str(path)
    warmed, trained = _vision(path), _vision(checkpoint)
    assert set(warmed) <= set(trained)
    assert all(torch.equal(warmed[k], trained[k]) for k in warmed)  # loaded, then frozen

    scratch, zero_shot = pretrain_variant("itc", 0.0, 0, tmp_path, replace(budget, warmup_steps=0))
    assert "vision_warmup" not in zero_shot
    assert not any("stem" in k for k in _vision(scratch)) and any("stem" in k for k in trained)


def _config_of(run_dir):
    import json

    return json.loads((run_dir / "config.json").read_text())


def test_each_variant_pretrains_and_finetunes_with_its_own_switches(tmp_path):
    """What a run of each row really trained with (the config its pre-training and fine-tuning recorded), and the
    MoD rows' losses apart from the same seed's row without MoD."""
    import json

    from albef_lab.shapesworld.ablation import finetune_tasks, pretrain_variant

    budget = Budget.quick()
    losses = {}
    for name, v in VARIANTS.items():
        checkpoint, _ = pretrain_variant(name, 0.0, 0, tmp_path, budget)
        m = _config_of(checkpoint.parent)["model"]
        expected = load_config(None, list(v.pretrain), "tiny").model
        assert (m["use_itc"], m["hard_negatives"], m["distill"], m["distill_mlm"]) == (
            expected.use_itc, expected.hard_negatives, expected.distill, expected.distill_mlm), name
        rows = [json.loads(x) for x in (checkpoint.parent / "metrics.jsonl").read_text().splitlines()]
        losses[name] = [(r["loss_ita"], r["loss_mlm"]) for r in rows if "loss_ita" in r]
        if name in ("itc", "full_mod_ft"):
            finetune_tasks(checkpoint, name, 0.0, 0, tmp_path / name, tmp_path, budget, tasks=("retrieval",))
            assert _config_of(tmp_path / name / "retrieval")["model"]["distill"] is (name == "full_mod_ft")
    assert losses["itc_mod"] != losses["itc_hardneg"]  # the teacher's targets moved ITC
    assert [i for i, _ in losses["itc_mod"]] != [i for i, _ in losses["itc_hardneg"]]
    assert [m for _, m in losses["full"]] != [m for _, m in losses["itc_mod"]]  # and MLM's, where it is distilled
    assert losses["full_mod_ft"] == losses["full"]  # one pre-training serves both rows


def test_the_noise_level_reaches_the_world(tmp_path):
    """A sweep's noise corrupts that share of the pre-training captions; the other files stay the clean world's."""
    import json

    from albef_lab.shapesworld.ablation import make_world

    budget = Budget.quick()
    clean, noisy = make_world(tmp_path, 0.0, budget), make_world(tmp_path, 0.4, budget)
    a, b = (json.loads((w / "pretrain.json").read_text()) for w in (clean, noisy))
    assert len(a) == len(b) and [e["image"] for e in a] == [e["image"] for e in b]
    changed = sum(x["caption"] != y["caption"] for x, y in zip(a, b, strict=True)) / len(a)
    assert abs(changed - 0.4) < 0.03, changed  # the share asked, up to corruptions that repeat the caption
    assert (clean / "coco_test.json").read_text() == (noisy / "coco_test.json").read_text()


def test_every_column_fine_tunes_the_image_encoder_at_one_rate(tmp_path):
    """Table 1's grounding column is fine-tuned at the other columns' image-encoder rate (the tiny recipe's own
    grounding fine-tune runs at 3x the lr; the table was measured without it)."""
    from albef_lab.shapesworld.ablation import _config
    from albef_lab.shapesworld.config import tiny

    assert tiny().shapesworld.grounding_vision_lr_scale != tiny().shapesworld.vision_lr_scale
    for warmup in (600, 0):
        sw = _config(tmp_path, tmp_path, 10, 8, 0, Budget(warmup_steps=warmup), [], False).shapesworld
        assert sw.grounding_vision_lr_scale == sw.vision_lr_scale


def test_the_grounding_column_stands_beside_a_random_object_and_another_objects_words(tmp_path, monkeypatch):
    """Grounding's control in Table 1 is the same model given another object's expression, its baseline a map on
    a random object (the random proposal, background boxes included, is the weaker one)."""
    from albef_lab.eval.grounding import random_object_baseline, random_proposal_baseline
    from albef_lab.shapesworld.ablation import baselines, finetune_tasks, make_world, pretrain_variant
    from albef_lab.train import engine

    budget = Budget.quick()
    checkpoint, _ = pretrain_variant("itc", 0.0, 0, tmp_path, budget)
    asked, real = [], engine.evaluate
    monkeypatch.setattr(engine, "evaluate", lambda *a, **k: asked.append(k.get("blind")) or real(*a, **k))
    results = finetune_tasks(checkpoint, "itc", 0.0, 0, tmp_path / "run", tmp_path, budget, tasks=("grounding",))
    assert asked == ["text"] and 0 <= results["grounding"]["blind"]["acc_all"] <= 100
    data = make_world(tmp_path, 0.0, budget)
    ann, refer = data / "grounding_test.json", data / "refcoco+"
    assert baselines(data, results)["grounding"] == random_object_baseline(ann, refer)["acc_all"]
    assert random_object_baseline(ann, refer)["acc_all"] > random_proposal_baseline(ann, refer)["acc_all"]
