"""The tiny recipe's last ITM step (`shapesworld.itm_finish_steps`, albef_lab/shapesworld/itm_finish.py): negatives
mined over the whole training split are false and ITC's favourites, only the fused half learns (ITC's numbers do not
move), the run records and checkpoints the step, and a resumed run does not take it twice."""

import json

import torch

from albef_lab.data.datasets import PretrainDataset
from albef_lab.data.formats import pre_caption
from albef_lab.models.factory import load_model
from albef_lab.shapesworld import itm_finish as F
from albef_lab.shapesworld import load_config
from albef_lab.shapesworld import world as W
from albef_lab.shapesworld.negatives import train_scenes
from albef_lab.train import engine as E
from tests.helpers import SMALL, make_world


def weights(model, prefix: str) -> torch.Tensor:
    return torch.cat([p.detach().flatten().clone() for n, p in model.named_parameters() if n.startswith(prefix)])


STEP = ["shapesworld.itm_finish_steps=25", "shapesworld.itm_finish_mined=4", "shapesworld.itm_finish_lr=3e-3"]


def cfg(world, out, *extra):
    return load_config(None, [*SMALL, f"data.root={world}", f"train.output_dir={out}", "train.max_steps=3",
                              "train.save_every=3", "train.eval_every=3", *extra], "tiny")


def test_mined_negatives_are_false_and_the_most_itc_similar_and_only_the_fused_half_learns(tmp_path):
    world = make_world(tmp_path / "w", images=60, seed=3)
    E.pretrain(cfg(world, tmp_path / "run"))
    model, mcfg, _ = load_model(tmp_path / "run" / "model.pth", "pretrain")
    from albef_lab.data.tokenizer import load_tokenizer

    tok = load_tokenizer(world / "vocab")
    data = PretrainDataset(world / "coco_train.json", world, None)
    scenes = train_scenes(world / "scenes.json", data.image_files)
    split = F.encode_training_split(model, tok, data, scenes, k=4, max_tokens=30)
    # the captions as pre-training reads them: the file's listing captions have commas, pre_caption drops them
    raw = [e["caption"] for e in data.entries]  # one caption per entry in this world's file
    assert any("," in c for c in raw)
    assert not any("," in t for t in split.texts) and set(split.texts) == {pre_caption(c) for c in raw}
    assert len(split.captions) == len(split.scenes) == split.image_states.shape[0] == 48  # 80 % of 60
    # every mined negative is false of its image, and they are ITC's top false captions, in ITC's order
    with torch.no_grad():
        image_feat = torch.nn.functional.normalize(model.vision_proj(split.image_states[:, 0]), dim=-1)
        text_feat = torch.nn.functional.normalize(model.text_proj(split.text_states[:, 0]), dim=-1)
    sims = image_feat @ text_feat.t()
    for i, negs in enumerate(split.negatives):
        assert len(negs) == 4
        assert not any(W.caption_holds(split.scenes[i], split.texts[t]) for t in negs)
        ranked = sims[i].argsort(descending=True).tolist()
        false = [t for t in ranked if not W.caption_holds(split.scenes[i], split.texts[t])]
        assert negs == false[:4]
        assert all(W.caption_holds(split.scenes[i], split.texts[t]) for t in split.captions[i])

    fused = weights(model, "text_encoder.bert.encoder.layer.1.")  # SMALL: layer 0 text-mode, layer 1 fusion
    text_mode = weights(model, "text_encoder.bert.encoder.layer.0.")
    others = {p: weights(model, p) for p in ("visual_encoder.", "text_encoder.bert.embeddings.", "text_proj.",
                                             "vision_proj.", "itm_head.")}
    grads = {n: p.requires_grad for n, p in model.named_parameters()}
    out = F.train_itm_alone(model, tok, data, scenes,
                       F.FinishConfig(steps=60, mined=4, batch_size=16, lr=3e-3, progress=False))
    assert out["steps"] == 60 and out["loss_last50"] < out["loss_first50"], out  # it fits the training pairs
    assert not torch.equal(weights(model, "text_encoder.bert.encoder.layer.1."), fused)
    assert not torch.equal(weights(model, "itm_head."), others.pop("itm_head."))
    assert torch.equal(weights(model, "text_encoder.bert.encoder.layer.0."), text_mode)  # what ITC reads
    for prefix, before in others.items():
        assert torch.equal(weights(model, prefix), before), prefix
    assert {n: p.requires_grad for n, p in model.named_parameters()} == grads  # flags restored


def test_pretrain_takes_the_step_once_and_itc_does_not_move(tmp_path):
    world = make_world(tmp_path / "w", images=60, seed=3)
    plain = E.pretrain(cfg(world, tmp_path / "plain"))
    run = tmp_path / "run"
    finished = E.pretrain(cfg(world, run, *STEP))
    assert "itm_finish" not in plain and finished["itm_finish"]["steps"] == 25, finished
    assert "clock_cuts" not in finished, finished
    for k in ("img_r1", "txt_r1", "r_mean"):  # the same pre-training, and nothing ITC reads trained after it
        assert finished[k] == plain[k], k
    assert (finished["itm_acc"], finished["itm_acc_hard"]) != (plain["itm_acc"], plain["itm_acc_hard"])
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert any(r.get("itm_finish_steps") == 25 for r in rows)
    last = [r["val_itm_acc"] for r in rows if "val_itm_acc" in r][-1]
    assert abs(last - finished["itm_acc"]) < 1e-2  # logged: the evaluation after the step
    ckpt = torch.load(E.latest_checkpoint(run), map_location="cpu", weights_only=False)
    assert ckpt["state"]["stages"]["itm_finish"]["steps"] == 25
    model_after = torch.load(run / "model.pth", map_location="cpu", weights_only=False)["model"]
    assert all(torch.equal(ckpt["model"][k], v) for k, v in model_after.items())  # the checkpoint has the step
    # resuming the finished run does not take the step again
    again = E.train(cfg(world, run, *STEP), resume="auto")
    assert again["itm_finish"] == finished["itm_finish"] and "clock_cuts" not in again, again  # its record
    model_again = torch.load(run / "model.pth", map_location="cpu", weights_only=False)["model"]
    assert all(torch.equal(model_again[k], v) for k, v in model_after.items())


def test_a_budget_spent_before_the_step_is_reported_as_cut(tmp_path, capsys):
    world = make_world(tmp_path / "w", images=60, seed=3)
    cut = E.pretrain(cfg(world, tmp_path / "cut", *STEP, "train.max_minutes=0.00001"))
    assert "itm_finish" not in cut and cut["clock_cuts"] == {"pretrain": [1, 3], "itm_finish": [0, 25]}, cut
    out = capsys.readouterr().out
    assert "stopped pretrain 1 of 3 steps, itm_finish 0 of 25 steps" in out and "train.max_minutes=0 runs" in out


def test_the_pretraining_clock_keeps_minutes_for_the_step(tmp_path, capsys):
    """`shapesworld.itm_finish_minutes`: with a clock, pre-training stops that many minutes early and the step gets them
    (on a slow machine the clock left it nothing). Off, the same budget lets pre-training make every step."""
    world = make_world(tmp_path / "w", images=60, seed=3)
    clock = [*STEP, "train.max_minutes=0.5"]
    kept = E.pretrain(cfg(world, tmp_path / "kept", *clock, "shapesworld.itm_finish_minutes=0.5"))  # all of it kept
    assert kept["step"] == 1 and kept["itm_finish"]["steps"] == 25, kept
    assert kept["clock_cuts"] == {"pretrain": [1, 3]}, kept
    assert "train.max_minutes=0.5, of which 0.5 are kept for itm_finish" in capsys.readouterr().out
    plain = E.pretrain(cfg(world, tmp_path / "plain", *clock, "shapesworld.itm_finish_minutes=0"))
    assert plain["step"] == 3 and plain["itm_finish"]["steps"] == 25 and "clock_cuts" not in plain, plain


def test_the_step_needs_scene_graphs(tmp_path):
    import pytest

    world = make_world(tmp_path / "w", images=40, seed=1)
    (world / "scenes.json").unlink()
    with pytest.raises(ValueError, match="scenes.json"):
        E.pretrain(cfg(world, tmp_path / "r", "shapesworld.itm_finish_steps=2"))
