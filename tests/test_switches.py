"""Each switch of the config does what it says (and a run without it does not)."""

import pytest
import torch

from albef_lab.models.albef import ALBEF
from albef_lab.models.record import recording
from albef_lab.models.tasks import ALBEFVQA
from albef_lab.shapesworld import load_config
from albef_lab.train import engine as E
from albef_lab.train.tasks import Task
from tests.helpers import batch, make_world, metric_rows, small_cfg, small_config


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("w"), images=20, seed=2)


def test_grad_accum_takes_one_optimiser_step_per_group(world, tmp_path):
    one = E.Trainer(small_cfg(world, tmp_path / "a", "train.max_steps=2", "train.batch_size=4"))
    one.run()
    two = E.Trainer(small_cfg(world, tmp_path / "b", "train.max_steps=2", "train.batch_size=4",
                              "train.grad_accum=2"))
    two.run()
    assert one.state.step == two.state.step == 2
    assert (one.state.batch_in_epoch, two.state.batch_in_epoch) == (2, 4)  # micro-batches consumed


@pytest.mark.parametrize("precision,dtype", [("fp32", torch.float32), ("bf16", torch.bfloat16),
                                             ("fp16", torch.float16)])
def test_precision_runs_the_step_under_autocast(world, tmp_path, precision, dtype):
    trainer = E.Trainer(small_cfg(world, tmp_path / precision, "train.max_steps=1", f"train.precision={precision}"))
    with recording() as rec:
        result = trainer.run()
    assert rec["vl_output"].dtype == dtype  # the ITM head (a linear layer) of the last step
    assert result["step"] == 1 and torch.isfinite(torch.tensor(metric_rows(tmp_path / precision)[0]["loss"]))


def test_clip_grad_clips_with_the_given_norm(world, tmp_path, monkeypatch):
    calls = []
    real = torch.nn.utils.clip_grad_norm_
    monkeypatch.setattr(torch.nn.utils, "clip_grad_norm_", lambda p, n, *a, **k: calls.append(n) or real(p, n))
    E.pretrain(small_cfg(world, tmp_path / "c", "train.max_steps=2", "train.clip_grad=0.5"))
    assert calls == [0.5, 0.5]
    calls.clear()
    E.pretrain(small_cfg(world, tmp_path / "d", "train.max_steps=1"))
    assert calls == []


def test_fused_adamw_switch_picks_the_kernel_and_gives_the_same_update(world, tmp_path):
    runs = {}
    for fused in (True, False):
        trainer = E.Trainer(small_cfg(world, tmp_path / str(fused), "train.max_steps=2", "train.batch_size=4",
                                      f"train.fused_adamw={str(fused).lower()}"))
        assert trainer.optimizer.defaults["fused"] is fused
        start = trainer.model.itm_head.weight.detach().clone()
        trainer.run()
        runs[fused] = trainer.model.state_dict()
    assert not torch.equal(runs[True]["itm_head.weight"], start)  # the steps moved the weights compared below
    for k, v in runs[True].items():
        if v.is_floating_point():
            assert torch.allclose(v, runs[False][k], atol=1e-6), k


def test_max_minutes_stops_the_run_and_saves(world, tmp_path, capsys):
    result = E.pretrain(small_cfg(world, tmp_path / "m", "train.max_steps=50", "train.max_minutes=0.00001"))
    assert result["step"] == 1 and result["clock_cuts"] == {"pretrain": [1, 50]}, result
    assert (tmp_path / "m" / "model.pth").is_file() and "train.max_minutes" in capsys.readouterr().out


def test_make_world_switch(tmp_path):
    from albef_lab.shapesworld.recipe import make_world

    cfg = load_config(None, [f"data.root={tmp_path / 'w'}", "shapesworld.world.images=12", "shapesworld.world.res=32",
                             "shapesworld.world.make=false"], "tiny")
    train_file = tmp_path / "w" / "pretrain.json"
    with pytest.raises(FileNotFoundError, match="shapesworld.world.make is off"):
        make_world(cfg, progress=False)
    cfg.shapesworld.world.make = True
    assert make_world(cfg, progress=False) == tmp_path / "w"
    assert train_file.is_file() and len(list((tmp_path / "w" / "images").glob("*.png"))) == 12


@pytest.mark.parametrize("fix", [False, True])
def test_fix_duplicate_negatives_passes_image_ids_to_the_model(world, fix):
    cfg = load_config(None, [f"data.root={world}", f"model.fix_duplicate_negatives={str(fix).lower()}"], "tiny")
    from albef_lab.data.tokenizer import load_tokenizer

    task = Task(cfg, load_tokenizer(world / "vocab"))
    seen = {}

    def net(images, ids, mask, alpha, generator=None, image_ids=None, **kw):
        seen["image_ids"] = image_ids
        return {}

    task.forward(net, (torch.zeros(2, 3, 32, 32), ["a red circle", "two shapes"], torch.tensor([5, 5])), 0.0,
                 None, torch.device("cpu"))
    assert (seen["image_ids"] is not None) == fix


def test_distill_off_keeps_the_itc_targets_hard_whatever_alpha():
    torch.manual_seed(0)
    model = ALBEF(small_config(distill=False))
    image, ids, mask = batch()
    with recording() as rec:
        model(image, ids, mask, 0.4, generator=torch.Generator().manual_seed(0))
    assert torch.equal(rec["sim_i2t_targets"], rec["sim_targets"])
    assert torch.equal(rec["sim_t2i_targets"], rec["sim_targets"])


def test_fix_vqa_double_count_scores_the_first_token_once():
    torch.manual_seed(0)
    cfg = small_config(distill=False, decoder_layers=1)
    model = ALBEFVQA(cfg).eval()
    image, ids, mask = batch(b=2)
    answers = torch.tensor([[101, 104 + i, 102, 0] for i in range(6)])
    a_mask = (answers != 0).long()
    with recording() as rec:
        _, p_orig = model.rank_answers(image, ids[:2], mask[:2], answers, a_mask, 4)
    with recording() as fixed:
        _, p_fix = model.rank_answers(image, ids[:2], mask[:2], answers, a_mask, 4, fix_double_count=True)
    assert not torch.allclose(p_orig, p_fix)
    # corrected: softmax of the sequence log-likelihood alone; original: plus log P(first token) once more
    expected = torch.softmax(-fixed["answer_loss"].view(2, 4), dim=1).sort(dim=1, descending=True).values
    assert torch.allclose(p_fix, expected, atol=1e-6)
    twice = torch.softmax(rec["first_topk_probs"].log() - rec["answer_loss"].view(2, 4), 1)
    assert torch.allclose(p_orig, twice.sort(dim=1, descending=True).values, atol=1e-6)


def test_init_vision_and_init_text_start_where_the_paper_starts(world, tmp_path, capsys):
    from safetensors.torch import save_file

    from albef_lab.models.bert import BertForMaskedLM
    from albef_lab.models.vit import VisionTransformer

    cfg = small_cfg(world, tmp_path / "run", "train.max_steps=1")
    torch.manual_seed(123)
    deit = VisionTransformer(cfg.model.vision)  # stands for DeiT-B/16: same keys, plus a classifier head
    sd = deit.state_dict()
    sd["head.weight"], sd["head.bias"] = torch.zeros(10, 32), torch.zeros(10)
    torch.save({"model": sd}, tmp_path / "deit.pth")
    bert = BertForMaskedLM(cfg.model.text)  # stands for bert-base-uncased (no cross-attention in the file)
    folder = tmp_path / "bert-base-uncased"
    folder.mkdir()
    save_file({k: v.clone() for k, v in bert.state_dict().items() if ".crossattention." not in k
               and k != "cls.predictions.decoder.weight"}, str(folder / "model.safetensors"))
    cfg = small_cfg(world, tmp_path / "run", "train.max_steps=1", f"model.init_vision={tmp_path / 'deit.pth'}",
                    f"model.init_text={folder}")
    trainer = E.Trainer(cfg)
    m = trainer.model
    assert torch.equal(m.visual_encoder.blocks[0].mlp.fc1.weight, deit.blocks[0].mlp.fc1.weight)
    assert torch.equal(m.text_encoder.bert.encoder.layer[0].attention.self.query.weight,
                       bert.bert.encoder.layer[0].attention.self.query.weight)
    assert torch.equal(m.visual_encoder_m.pos_embed, deit.pos_embed)  # momentum copies start from the files
    out = capsys.readouterr().out
    assert "initialised the image encoder" in out and "initialised the text encoder" in out
    assert "crossattention" in out  # the report names what the file could not provide


@pytest.mark.parametrize("resize,fast", [("torch", True), ("pil", False)])
def test_data_resize_picks_the_training_images_path(world, tmp_path, resize, fast):
    """`data.resize`: the fast uint8 path reads files as tensors; `pil` is the original's PIL pipeline."""
    from albef_lab.train.tasks import task_class

    cfg = small_cfg(world, tmp_path, f"data.resize={resize}")
    task = task_class("pretrain")(cfg, None)
    ds = task.train_set()
    assert ds.transform.wants_tensor is fast
    assert isinstance(ds.open_image(ds.root / ds.entries[0]["image"]), torch.Tensor) is fast
    image, _, _ = ds[0]
    assert image.dtype == torch.float32 and image.shape[1:] == (cfg.model.vision.image_res,) * 2
