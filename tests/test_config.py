from pathlib import Path

import pytest

from albef_lab.config import Config, load_config, parse_overrides, preset

ROOT = Path(__file__).resolve().parents[1]


def test_presets_match_the_paper_and_tiny_is_small():
    base = preset("base").model
    assert (base.vision.width, base.vision.depth, base.vision.image_res, base.vision.patch_size) == (768, 12, 256, 16)
    assert (base.text.num_hidden_layers, base.text.fusion_layer, base.embed_dim) == (12, 6, 256)
    assert (base.queue_size, base.momentum, base.temp, base.alpha, base.mlm_probability) == (
        65536, 0.995, 0.07, 0.4, 0.15)
    tiny = preset("tiny").model
    assert tiny.vision.width < 256 and tiny.queue_size < 4096
    with pytest.raises(ValueError, match="unknown preset"):
        preset("huge")


def test_overrides_are_typed_and_nested():
    assert parse_overrides(["model.vision.width=64", "model.distill=false"]) == {
        "model": {"vision": {"width": 64}, "distill": False}}
    cfg = load_config(None, ["model.vision.width=64", "model.alpha=0", "model.distill=false"], "base")
    assert cfg.model.vision.width == 64 and cfg.model.alpha == 0.0 and isinstance(cfg.model.alpha, float)
    assert cfg.model.distill is False
    assert load_config(None, ["train.lr=1e-3"], "tiny").train.lr == 0.001


@pytest.mark.parametrize("bad,match", [
    (["model.nope=1"], "unknown config key 'model.nope'"),
    (["model.embed_dim=abc"], "expects int"),
    (["model.distill=1"], "true/false"),
    (["model.vision=3"], "section"),
    (["model.embed_dim"], "key=value"),
])
def test_bad_overrides_say_what_and_where(bad, match):
    with pytest.raises((KeyError, TypeError, ValueError), match=match):
        load_config(None, bad, "tiny")


def test_yaml_files_load_onto_their_presets(tmp_path):
    for path in sorted((ROOT / "configs").glob("*.yaml")):
        cfg = load_config(path)
        assert isinstance(cfg, Config)
    cfg = load_config(ROOT / "configs" / "pretrain_base.yaml")
    assert cfg.preset == "base" and cfg.model.vision.width == 768
    f = tmp_path / "x.yaml"
    f.write_text("preset: tiny\nmodel:\n  embed_dim: 32\n")
    assert load_config(f, ["model.queue_size=64"]).model.embed_dim == 32
    with pytest.raises(FileNotFoundError, match="missing.yaml"):
        load_config(tmp_path / "missing.yaml")


def test_tiny_grounding_trains_the_image_encoder_faster_and_files_and_overrides_still_win(tmp_path, monkeypatch):
    """`TASK_OVERRIDES`: the tiny preset fine-tunes grounding with the image encoder at 3x the lr (ITC Grad-CAM
    needs [CLS] to move); no other task or preset changes, and a file or an override set by the user wins."""
    assert load_config(None, [], "tiny").train.vision_lr_scale == 0.1
    assert load_config(None, [], "tiny", task="grounding").train.vision_lr_scale == 3.0
    assert load_config(None, [], "tiny", task="vqa").train.vision_lr_scale == 0.1
    assert load_config(None, [], "base", task="grounding").train.vision_lr_scale == 1.0  # the original's one lr
    assert load_config(None, ["train.vision_lr_scale=0.5"], "tiny", "grounding").train.vision_lr_scale == 0.5
    f = tmp_path / "g.yaml"
    f.write_text("preset: tiny\ntrain:\n  vision_lr_scale: 2\n")
    assert load_config(f, task="grounding").train.vision_lr_scale == 2.0

    # `albef-lab finetune grounding` trains with it; `albef-lab pretrain` does not
    import albef_lab.train.engine as E
    from albef_lab import cli

    seen = {}
    monkeypatch.setattr(E, "train", lambda cfg, task, **kw: seen.update({task: cfg.train.vision_lr_scale}) or {})
    monkeypatch.setattr(E, "pretrain", lambda cfg, resume=None: seen.update(pretrain=cfg.train.vision_lr_scale) or {})
    for argv in (["finetune", "grounding"], ["finetune", "retrieval"], ["pretrain"]):
        cli.main([*argv, f"train.output_dir={tmp_path / argv[-1]}"])
    assert seen == {"grounding": 3.0, "retrieval": 0.1, "pretrain": 0.1}, seen
