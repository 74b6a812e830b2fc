from pathlib import Path

import pytest

from albef_lab.config import Config, ConfigError, load_config, parse_overrides, preset
from albef_lab.shapesworld import RecipeConfig
from albef_lab.shapesworld import load_config as load_recipe

ROOT = Path(__file__).resolve().parents[1]


def test_presets_match_the_paper_and_tiny_is_small():
    base = preset("base").model
    assert (base.vision.width, base.vision.depth, base.vision.image_res, base.vision.patch_size) == (768, 12, 256, 16)
    assert (base.text.num_hidden_layers, base.text.fusion_layer, base.embed_dim) == (12, 6, 256)
    assert (base.queue_size, base.momentum, base.temp, base.alpha, base.mlm_probability) == (
        65536, 0.995, 0.07, 0.4, 0.15)
    tiny = load_recipe(None, [], "tiny").model
    assert tiny.vision.width < 256 and tiny.queue_size < 4096
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")


def test_the_core_knows_the_paper_and_the_recipe_adds_its_presets_and_section():
    """The paper's loader builds the paper's config and nothing else (no `tiny`, no recipe section); the
    recipe's loader adds `tiny` (its default) and a `shapesworld` section that is off in its `base`."""
    assert type(load_config(None, [], "base")) is Config and not hasattr(load_config(None, []), "shapesworld")
    with pytest.raises(ConfigError, match="unknown preset 'tiny'.*albef_lab.shapesworld.load_config"):
        load_config(None, [], "tiny")
    tiny, base = load_recipe(None, []), load_recipe(None, [], "base")
    assert isinstance(tiny, RecipeConfig) and tiny.preset == "tiny" and tiny.shapesworld.itm_finish_steps == 1000
    assert base.shapesworld.itm_finish_steps == 0 and base.shapesworld.warmup_minutes == 0
    assert base.model == preset("base").model and base.train == preset("base").train
    assert base.plugins("pretrain").stages == [] and not base.plugins("grounding").lr_scales


@pytest.mark.parametrize("old,new", [("train.vision_warmup_steps=5", "shapesworld.warmup_steps"),
                                     ("model.itm_weight=2", "shapesworld.itm_weight"),
                                     ("data.noise=0.2", "shapesworld.world.noise")])
def test_a_key_that_moved_into_the_recipe_is_named_with_its_new_name(tmp_path, old, new):
    with pytest.raises(ConfigError, match=f"{old.split('=')[0]} is now {new}"):
        load_recipe(None, [old])
    section, key = old.split("=")[0].split(".", 1)
    f = tmp_path / "old.yaml"
    f.write_text(f"{section}:\n  {key}: {old.split('=')[1]}\n")
    with pytest.raises(ConfigError, match=f"old.yaml: .* is now {new}"):
        load_recipe(f)
    with pytest.raises(ConfigError, match="tried and not adopted"):
        load_recipe(None, ["model.itm_edited_fraction=0.5"])


def test_overrides_are_typed_and_nested():
    assert parse_overrides(["model.vision.width=64", "model.distill=false"]) == {
        "model": {"vision": {"width": 64}, "distill": False}}
    cfg = load_config(None, ["model.vision.width=64", "model.alpha=0", "model.distill=false"], "base")
    assert cfg.model.vision.width == 64 and cfg.model.alpha == 0.0 and isinstance(cfg.model.alpha, float)
    assert cfg.model.distill is False
    assert load_recipe(None, ["train.lr=1e-3", "shapesworld.world.images=12"], "tiny").train.lr == 0.001


@pytest.mark.parametrize("bad,match", [
    (["model.nope=1"], "unknown config key 'model.nope'"),
    (["model.embed_dim=abc"], "expects int"),
    (["model.distill=1"], "true/false"),
    (["model.vision=3"], "section"),
    (["model.embed_dim"], "key=value"),
    (["shapesworld.warmup_steps=x"], "expects int"),
])
def test_bad_overrides_say_what_and_where(bad, match):
    with pytest.raises((KeyError, TypeError, ValueError), match=match):
        load_recipe(None, bad, "tiny")


def test_yaml_files_load_onto_their_presets(tmp_path):
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_recipe(path)
        assert isinstance(cfg, Config)
    cfg = load_recipe(ROOT / "configs" / "pretrain_base.yaml")
    assert cfg.preset == "base" and cfg.model.vision.width == 768
    assert load_recipe(ROOT / "configs" / "pretrain_tiny.yaml") == load_recipe(None, [])  # the file is the preset
    f = tmp_path / "x.yaml"
    f.write_text("preset: tiny\nmodel:\n  embed_dim: 32\n")
    assert load_recipe(f, ["model.queue_size=64"]).model.embed_dim == 32
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_recipe(tmp_path / "missing.yaml")


def test_tiny_grounding_trains_the_image_encoder_faster_and_files_and_overrides_still_win(tmp_path, monkeypatch):
    """The recipe fine-tunes grounding with the image encoder at 3x the lr (ITC Grad-CAM needs [CLS] to move), every
    other task at 0.1; the paper's base at the one lr; the user's own value wins."""
    tiny = load_recipe(None, [])
    assert tiny.plugins("grounding").lr_scales == {"visual_encoder.": 3.0}
    assert tiny.plugins("vqa").lr_scales == tiny.plugins("retrieval").lr_scales == {"visual_encoder.": 0.1}
    assert load_recipe(None, [], "base").plugins("grounding").lr_scales == {}
    mine = load_recipe(None, ["shapesworld.grounding_vision_lr_scale=0.5"]).plugins("grounding").lr_scales
    assert mine == {"visual_encoder.": 0.5}

    # `albef-lab finetune grounding` trains with it; `albef-lab finetune retrieval` does not
    import albef_lab.train.engine as E
    from albef_lab import cli

    seen = {}
    monkeypatch.setattr(E, "train", lambda cfg, task, **kw: seen.update({task: cfg.plugins(task).lr_scales}) or {})
    for argv in (["finetune", "grounding"], ["finetune", "retrieval"]):
        cli.main([*argv, f"train.output_dir={tmp_path / argv[-1]}"])
    assert seen == {"grounding": {"visual_encoder.": 3.0}, "retrieval": {"visual_encoder.": 0.1}}, seen
