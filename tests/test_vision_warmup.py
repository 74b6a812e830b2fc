"""The supervised warm-up of the image encoder (scripts/vision_warmup.py) and `train.freeze_vision`: the warm-up
learns the objects from the scene graphs, pre-training loads it through `model.init_vision`, and only the switch
keeps it as it was."""

import json
from pathlib import Path

import pytest
import torch

from albef_lab.cli import main as cli
from albef_lab.models.factory import create_model
from albef_lab.models.vit import VisionTransformer
from albef_lab.shapesworld import load_config
from albef_lab.train import engine as E
from tests.helpers import SMALL, load_module, make_world

ROOT = Path(__file__).resolve().parents[1]
CFG = [*SMALL, "model.vision.patch_size=8"]  # a 4 x 4 grid of tokens: objects of their own


def weights(path: Path, prefix: str = "") -> dict[str, torch.Tensor]:
    sd = torch.load(path, map_location="cpu", weights_only=False)["model"]
    return {k[len(prefix):]: v for k, v in sd.items() if k.startswith(prefix)}


def test_summary_labels_name_each_colour_shape_pair_shape_and_colour():
    from albef_lab.shapesworld import world as W
    from albef_lab.shapesworld.warmup import summary_labels

    objs = [W.Obj("circle", "red", "small", (0.1, 0.1, 0.3, 0.3)), W.Obj("star", "red", "large", (0.5, 0.5, 0.8, 0.8))]
    y = summary_labels([W.Scene(0, 0, objs), W.Scene(1, 0, objs[1:])])
    n_s, n_c = len(W.SHAPES), len(W.COLOURS)
    assert y.shape == (2, n_c * n_s + n_s + n_c)
    red, circle, star = list(W.COLOURS).index("red"), W.SHAPES.index("circle"), W.SHAPES.index("star")
    assert y[0].nonzero().flatten().tolist() == sorted([red * n_s + circle, red * n_s + star, n_c * n_s + circle,
                                                        n_c * n_s + star, n_c * n_s + n_s + red])
    assert y[1].nonzero().flatten().tolist() == [red * n_s + star, n_c * n_s + star, n_c * n_s + n_s + red]


def test_warmup_learns_the_objects_and_only_freeze_vision_keeps_it_through_pretraining(tmp_path):
    world = make_world(tmp_path / "w", images=200, seed=4)
    warmup_script = load_module(ROOT / "scripts" / "vision_warmup.py").main
    warm = tmp_path / "vit.pth"
    result = warmup_script(["--out", str(warm), "--data", str(world), "--steps", "300",
                                                "--quiet", *CFG])
    held_out = result["held_out"]
    assert result["steps"] == 300
    assert held_out["colour"] > held_out["colour_majority"] + 30, held_out  # learned, on images it never saw
    assert not {"column", "row"} & set(held_out)
    placed = warmup_script(["--out", str(tmp_path / "placed.pth"), "--data", str(world),
                                                "--steps", "300", "--quiet", "--place", *CFG])["held_out"]
    assert placed["column"] > placed["column_majority"] + 10, placed  # --place: where each object is, too
    assert held_out["colour_token"] > held_out["colour_majority"] + 30, held_out  # single tokens name it too
    # the tiny preset teaches every token under a box; `vision_warmup_tokens=false` only the box's mean token
    mean_only = tmp_path / "mean.pth"
    warmup_script(["--out", str(mean_only), "--data", str(world), "--steps", "300", "--quiet", *CFG,
                   "shapesworld.warmup_tokens=false"])
    assert not torch.equal(weights(mean_only)["blocks.0.attn.qkv.weight"], weights(warm)["blocks.0.attn.qkv.weight"])
    # `vision_warmup_positions`: every token also names its own column and row of the 4 x 4 grid (chance 25 %)
    where = warmup_script(["--out", str(tmp_path / "where.pth"), "--data", str(world), "--steps", "300", "--quiet",
                           *CFG, "shapesworld.warmup_positions=true"])["held_out"]
    assert where["token_column"] > 90 and where["token_row"] > 90, where
    assert "token_column" not in held_out
    # `vision_warmup_summary`: [CLS] also names the image's (colour, shape) pairs. At this size it learns little
    # in 300 steps (the default's run: docs/itm_recipe.md); here: the loss reaches the encoder, the readout is there
    summary_file = tmp_path / "summary.pth"
    summary = warmup_script(["--out", str(summary_file), "--data", str(world), "--steps", "300", "--quiet", *CFG,
                             "shapesworld.warmup_summary=true"])["held_out"]
    assert "cls_pairs_exact" not in held_out and 0 <= summary["cls_pairs_exact"] <= 100, summary
    assert not torch.equal(weights(summary_file)["blocks.0.attn.qkv.weight"], weights(warm)["blocks.0.attn.qkv.weight"])
    assert len(held_out["cls_on_objects"]) == 1 and 0 < held_out["objects_share"] < 100  # one value per block
    # the ViT itself trained (a head over a fixed random encoder would also read some colour)
    cfg = load_config(None, CFG, "tiny")
    torch.manual_seed(cfg.train.seed)
    fresh = VisionTransformer(cfg.model.vision).state_dict()
    vit = weights(warm)
    assert vit.keys() == fresh.keys() and not torch.equal(vit["blocks.0.attn.qkv.weight"],
                                                          fresh["blocks.0.attn.qkv.weight"])

    runs = {}
    for freeze in ("true", "false"):
        out = tmp_path / f"freeze_{freeze}"
        assert cli(["pretrain", *CFG, f"data.root={world}", f"train.output_dir={out}", "train.max_steps=3",
                    f"model.init_vision={warm}", f"shapesworld.freeze_vision={freeze}"]) == 0
        runs[freeze] = out / "model.pth"
    kept = weights(runs["true"], "visual_encoder.")
    assert all(torch.equal(kept[k], vit[k]) for k in vit)  # frozen: the warm-up's weights, bit-exact
    # its momentum copy, m <- 0.99 m + 0.01 p with m = p, stays equal to rounding (0.99 x + 0.01 x is not always x)
    def drift(prefix: str, run: str) -> float:
        w = weights(runs[run], prefix)
        return max((w[k] - vit[k]).abs().max().item() for k in vit)

    assert drift("visual_encoder_m.", "true") < 1e-6  # (1.3e-6 after the 1120 steps of a full run)
    # the control: without the switch both move (the momentum copy by 1 % of the encoder's steps)
    assert drift("visual_encoder.", "false") > 1e-4 and drift("visual_encoder_m.", "false") > 1e-6
    # the rest of the model did train under the switch: a text weight left its initial value
    cfg = load_config(None, [*CFG, f"data.root={world}"], "tiny")
    torch.manual_seed(cfg.train.seed)  # as the engine seeds before it builds the model
    init = create_model("pretrain", cfg.model).state_dict()
    text = "text_encoder.bert.encoder.layer.0.attention.self.query.weight"
    assert not torch.equal(weights(runs["true"])[text], init[text])


def test_pretrain_warms_up_its_own_encoder_inside_the_time_budget(tmp_path):
    """`shapesworld.warmup_steps` / `_minutes`: `albef-lab pretrain` trains the image encoder on the scene graphs
    first (the tiny recipe), copies it to the momentum encoder, keeps it frozen (no `freeze_vision` needed) and
    counts its minutes against `max_minutes`."""
    world = make_world(tmp_path / "w", images=200, seed=4)
    out = tmp_path / "run"
    assert cli(["pretrain", *CFG, f"data.root={world}", f"train.output_dir={out}", "train.max_steps=3",
                "shapesworld.warmup_steps=300"]) == 0
    held_out = json.loads((out / "vision_warmup.json").read_text())["held_out"]
    assert held_out["colour"] > held_out["colour_majority"] + 30, held_out
    cfg = load_config(None, [*CFG, f"data.root={world}"], "tiny")
    torch.manual_seed(cfg.train.seed)  # as the engine seeds before it builds the model
    fresh = create_model("pretrain", cfg.model).state_dict()
    vit, vit_m = weights(out / "model.pth", "visual_encoder."), weights(out / "model.pth", "visual_encoder_m.")
    key = "blocks.0.attn.qkv.weight"
    assert not torch.equal(vit[key], fresh["visual_encoder." + key])  # frozen, so only the warm-up moved it
    assert max((vit[k] - vit_m[k]).abs().max().item() for k in vit) < 1e-6  # the momentum copy starts from it

    # the warm-up's minutes come out of train.max_minutes: a budget it (nearly) used up leaves pre-training one step
    def timed(warmup: float, budget: float) -> dict:
        return E.pretrain(load_config(None, [*CFG, f"data.root={world}", f"train.output_dir={tmp_path / 'timed'}",
                                             f"shapesworld.warmup_minutes={warmup}", f"train.max_minutes={budget}",
                                             "shapesworld.warmup_max_steps=0",  # the clock alone
                                             "train.max_steps=200"], "tiny"))

    result = timed(0.05, 0.0501)
    assert result["vision_warmup"]["minutes"] >= 0.05 and result["step"] == 1, result
    assert result["clock_cuts"] == {"pretrain": [1, 200]}, result  # a warm-up on the clock alone asks no steps
    # `vision_warmup_max_steps` ends a warm-up by minutes early, when its steps come first (the tiny recipe: 1000)
    capped = E.pretrain(load_config(None, [*CFG, f"data.root={world}", f"train.output_dir={tmp_path / 'capped'}",
                                           "shapesworld.warmup_minutes=2", "shapesworld.warmup_max_steps=7",
                                           "train.max_steps=1"], "tiny"))
    assert capped["vision_warmup"]["steps"] == 7 and capped["vision_warmup"]["minutes"] < 1, capped
    assert "clock_cuts" not in capped, capped  # every stage made its steps
    with pytest.raises(ValueError, match="leaves nothing of train.max_minutes"):  # a warm-up as long as the budget
        timed(0.05, 0.05)
    # the minutes kept for the last ITM step count too: a warm-up shorter than the budget may still leave nothing
    kept = ["shapesworld.itm_finish_steps=1", "shapesworld.itm_finish_minutes=0.06"]
    with pytest.raises(ValueError, match=r"warmup_minutes=0.05 with 0.06 minutes kept for the stages after training "
                                         r"leaves nothing of train.max_minutes=0.1"):
        E.pretrain(load_config(None, [*CFG, f"data.root={world}", f"train.output_dir={tmp_path / 'kept'}",
                                      "shapesworld.warmup_minutes=0.05", "train.max_minutes=0.1",
                                      "shapesworld.warmup_max_steps=0", *kept], "tiny"))


def test_a_clock_that_cuts_the_recipe_short_says_so_and_how_to_run_every_step(tmp_path, capsys):
    """On a machine slower than the one the tiny recipe was timed on, its minutes stop the warm-up before its
    1000 steps and the model is weaker than the README's: the run says which stages the clock cut and which
    overrides give every step (docs/itm_recipe.md measured a 362-step warm-up on such a machine)."""
    world = make_world(tmp_path / "w", images=60, seed=4)
    result = E.pretrain(load_config(None, [*CFG, f"data.root={world}", f"train.output_dir={tmp_path / 'slow'}",
                                           "shapesworld.warmup_minutes=0.005", "shapesworld.warmup_max_steps=100000",
                                           "train.max_steps=2"], "tiny"))
    made = result["vision_warmup"]["steps"]
    assert 0 < made < 100000 and result["clock_cuts"] == {"vision_warmup": [made, 100000]}, result
    out = capsys.readouterr().out
    assert f"vision_warmup {made} of 100000 steps" in out
    assert "train.max_minutes=0 shapesworld.warmup_steps=100000 runs every step" in out


def test_vision_warmup_needs_scene_graphs(tmp_path):
    world = make_world(tmp_path / "w", images=40, seed=1)
    (world / "scenes.json").unlink()
    with pytest.raises(FileNotFoundError, match="scenes.json"):
        E.pretrain(load_config(None, [*CFG, f"data.root={world}", f"train.output_dir={tmp_path / 'r'}",
                                      "train.max_steps=1", "shapesworld.warmup_steps=2"], "tiny"))


def test_resume_auto_in_an_empty_folder_warms_up_and_a_resumed_run_does_not(tmp_path):
    """`--resume auto` starts fresh in an empty folder (a sweep's first try): the warm-up runs; resuming a warmed-up
    run loads its checkpoint, does not warm up again, and keeps the encoder frozen."""
    world = make_world(tmp_path / "w", images=80, seed=2)
    run = tmp_path / "run"

    def cfg(steps: int):
        return load_config(None, [*CFG, f"data.root={world}", f"train.output_dir={run}", f"train.max_steps={steps}",
                                  "train.save_every=2", "shapesworld.warmup_steps=20"], "tiny")

    first = E.train(cfg(2), resume="auto")
    assert first["step"] == 2 and first["vision_warmup"]["steps"] == 20, first
    vit = weights(run / "model.pth", "visual_encoder.")
    second = E.train(cfg(4), resume="auto")
    assert second["step"] == 4 and second["vision_warmup"] == first["vision_warmup"], second  # its record, not again
    resumed = weights(run / "model.pth", "visual_encoder.")
    assert all(torch.equal(resumed[k], vit[k]) for k in vit)  # still frozen after the resume
