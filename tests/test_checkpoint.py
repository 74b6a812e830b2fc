import os

import pytest
import torch

from albef_lab.cli import main
from albef_lab.models.albef import ALBEF
from albef_lab.models.checkpoint import (
    CheckpointError,
    load_into,
    read_file,
    resize_pos_embed,
    save_atomic,
    state_dict_of,
)
from albef_lab.models.factory import load_model, save_model
from tests.helpers import batch, small_config


def test_official_layout_round_trip_is_strict_and_reported(tmp_path, capsys):
    torch.manual_seed(0)
    src = ALBEF(small_config())
    path = tmp_path / "ALBEF.pth"
    torch.save({"model": src.state_dict(), "epoch": 3, "config": {"lr": 1e-4}}, path)
    dst = ALBEF(small_config())
    report = load_into(dst, state_dict_of(read_file(path)))
    assert report.clean and not report.resized
    assert "missing: none" in capsys.readouterr().out
    for (k, a), b in zip(src.state_dict().items(), dst.state_dict().values(), strict=True):
        assert torch.equal(a, b), k
    assert dst.text_encoder.cls.predictions.decoder.weight is dst.text_encoder.bert.embeddings.word_embeddings.weight


def test_wrong_and_missing_keys_are_named(tmp_path):
    sd = ALBEF(small_config()).state_dict()
    sd["visual_encoder.blocks.0.attn.qkvv.weight"] = sd.pop("visual_encoder.blocks.0.attn.qkv.weight")
    with pytest.raises(CheckpointError) as e:
        load_into(ALBEF(small_config()), sd, verbose=False)
    assert "qkvv" in str(e.value) and "visual_encoder.blocks.0.attn.qkv.weight" in str(e.value)
    report = load_into(ALBEF(small_config()), sd, strict=False, verbose=False)
    assert report.missing == ["visual_encoder.blocks.0.attn.qkv.weight"]
    assert report.unexpected == ["visual_encoder.blocks.0.attn.qkvv.weight"]


def test_position_embeddings_are_resized_bicubic():
    torch.manual_seed(0)
    small = ALBEF(small_config())  # 32 px / 16 = 2x2 patches
    big_cfg = small_config()
    big_cfg.vision.image_res = 64  # 4x4 patches
    big = ALBEF(big_cfg)
    report = load_into(big, small.state_dict(), verbose=False)
    assert len(report.resized) == 2 and report.clean
    assert big.visual_encoder.pos_embed.shape == (1, 17, 32)
    assert torch.equal(big.visual_encoder.pos_embed[:, 0], small.visual_encoder.pos_embed[:, 0])
    grid = small.visual_encoder.pos_embed[:, 1:].reshape(1, 2, 2, 32).permute(0, 3, 1, 2)
    expect = torch.nn.functional.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False)
    assert torch.allclose(big.visual_encoder.pos_embed[:, 1:], expect.permute(0, 2, 3, 1).reshape(1, 16, 32))
    same = resize_pos_embed(small.visual_encoder.pos_embed.detach(), 4)
    assert torch.equal(same, small.visual_encoder.pos_embed)
    with pytest.raises(ValueError, match="square"):
        resize_pos_embed(torch.zeros(1, 5, 8), 6)


def test_shape_mismatch_is_reported(tmp_path):
    sd = ALBEF(small_config()).state_dict()
    sd["itm_head.weight"] = torch.zeros(3, 32)
    with pytest.raises(CheckpointError, match="itm_head.weight"):
        load_into(ALBEF(small_config()), sd, verbose=False)


def test_unsafe_and_corrupt_files_give_clear_errors(tmp_path):
    import argparse
    p = tmp_path / "pickled.pth"
    torch.save({"model": {}, "args": argparse.Namespace(lr=1e-4)}, p)  # as the official files do
    with pytest.raises(CheckpointError, match="trust_pickle"):
        read_file(p)
    bad = tmp_path / "corrupt.pth"
    bad.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="corrupt"):
        read_file(bad)
    with pytest.raises(FileNotFoundError, match="nowhere.pth"):
        read_file(tmp_path / "nowhere.pth")


def test_our_checkpoint_carries_the_config(tmp_path):
    cfg = small_config(embed_dim=12)
    torch.manual_seed(0)
    model = ALBEF(cfg)
    save_model(tmp_path / "m.pth", model, cfg)
    loaded, cfg2, report = load_model(tmp_path / "m.pth")
    assert cfg2 == cfg and report.clean
    image, ids, mask = batch()
    model.eval()
    loaded.eval()
    with torch.no_grad():
        assert torch.equal(model.visual_encoder(image), loaded.visual_encoder(image))


def test_atomic_save_keeps_the_old_file_when_writing_fails(tmp_path, monkeypatch):
    path = tmp_path / "ckpt.pth"
    save_atomic({"model": {"w": torch.ones(2)}}, path)

    def boom(obj, f):
        f.write(b"half")
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", boom)
    with pytest.raises(KeyboardInterrupt):
        save_atomic({"model": {"w": torch.zeros(2)}}, path)
    monkeypatch.undo()
    assert torch.equal(read_file(path)["model"]["w"], torch.ones(2))
    assert os.listdir(tmp_path) == ["ckpt.pth"]


def test_cli_reports_errors_without_a_traceback(tmp_path, capsys):
    assert main(["verify-reference", str(tmp_path / "none.pt")]) == 2
    assert "none.pt" in capsys.readouterr().err


# --- published files: fine-tuned layouts load strictly; pre-trained files initialise every task ---

from albef_lab.models.checkpoint import init_from_pretrained  # noqa: E402
from albef_lab.models.factory import create_model  # noqa: E402


def nlvr_ready_config(**kw):
    cfg = small_config(**kw)
    cfg.text.fusion_layer, cfg.text.num_hidden_layers = 1, 3  # 2 text+fusion -> NLVR2 doubles the fusion layers
    return cfg


@pytest.mark.parametrize("task,file", [("retrieval", "mscoco.pth"), ("retrieval", "flickr30k.pth"),
                                       ("grounding", "refcoco.pth"), ("vqa", "vqa.pth"),
                                       ("pretrain_nlvr", "pretrain_model_nlvr.pth"), ("nlvr", "nlvr.pth"),
                                       ("ve", "ve.pth")])
def test_finetuned_files_load_strictly(tmp_path, task, file):
    torch.manual_seed(0)
    src = create_model(task, small_config())
    torch.save({"model": src.state_dict(), "epoch": 5}, tmp_path / file)
    torch.manual_seed(1)
    dst = create_model(task, small_config())
    report = load_into(dst, state_dict_of(read_file(tmp_path / file)), verbose=False)
    assert report.clean
    for k, v in src.state_dict().items():
        assert torch.equal(v, dst.state_dict()[k]), k


def test_pretrained_file_initialises_retrieval_at_a_larger_image_size(tmp_path):
    torch.manual_seed(0)
    pre = ALBEF(small_config())
    cfg = small_config()
    cfg.vision.image_res = 48  # as 256 -> 384
    task = create_model("retrieval", cfg)
    report = init_from_pretrained(task, "retrieval", pre.state_dict(), fusion_layer=2, verbose=False)
    assert report.missing == ["idx_queue"] and len(report.resized) == 2
    assert all(".cls." in k for k in report.unexpected) and report.unexpected
    a = pre.text_encoder.bert.encoder.layer[3].crossattention.self.key.weight
    assert torch.equal(task.text_encoder.encoder.layer[3].crossattention.self.key.weight, a)
    assert torch.equal(task.text_encoder_m.embeddings.word_embeddings.weight,
                       pre.text_encoder_m.bert.embeddings.word_embeddings.weight)


def test_pretrained_file_builds_the_vqa_decoder_from_the_fusion_layers():
    torch.manual_seed(0)
    pre = ALBEF(small_config())
    vqa = create_model("vqa", small_config(decoder_layers=2))  # one decoder layer per fusion layer
    report = init_from_pretrained(vqa, "vqa", pre.state_dict(), fusion_layer=2, verbose=False)
    assert not report.missing and all(k.startswith(("vision_proj", "text_proj", "itm_head", "temp", "image_queue",
                                                     "text_queue", "queue_ptr")) for k in report.unexpected)
    with pytest.raises(CheckpointError, match="text_decoder.bert.encoder.layer.2"):
        init_from_pretrained(create_model("vqa", small_config()), "vqa", pre.state_dict(), fusion_layer=2,
                             verbose=False)  # 6 decoder layers, only 2 fusion layers to fill them
    for i in range(2):
        assert torch.equal(vqa.text_decoder.bert.encoder.layer[i].crossattention.self.query.weight,
                           pre.text_encoder.bert.encoder.layer[2 + i].crossattention.self.query.weight)
        assert torch.equal(vqa.text_decoder_m.bert.encoder.layer[i].output.dense.weight,
                           pre.text_encoder_m.bert.encoder.layer[2 + i].output.dense.weight)
    assert torch.equal(vqa.text_decoder.cls.predictions.transform.dense.weight,
                       pre.text_encoder.cls.predictions.transform.dense.weight)
    assert vqa.text_decoder.cls.predictions.decoder.weight is vqa.text_decoder.bert.embeddings.word_embeddings.weight


def test_text_assignment_then_nlvr_with_the_momentum_fix():
    torch.manual_seed(0)
    base = nlvr_ready_config()
    pre = ALBEF(base)
    ta = create_model("pretrain_nlvr", base)
    assert len(ta.text_encoder.encoder.layer) == 5
    init_from_pretrained(ta, "pretrain_nlvr", pre.state_dict(), fusion_layer=1, verbose=False)
    for i in range(2):
        for j in (1 + 2 * i, 2 + 2 * i):
            assert torch.equal(ta.text_encoder.encoder.layer[j].crossattention.self.query.weight,
                               pre.text_encoder.bert.encoder.layer[1 + i].crossattention.self.query.weight)
    sd = ta.state_dict()
    original = create_model("nlvr", base)
    init_from_pretrained(original, "nlvr", sd, fusion_layer=1, verbose=False)
    assert not torch.equal(original.visual_encoder_m.cls_token, original.visual_encoder.cls_token)
    fixed = create_model("nlvr", base)
    init_from_pretrained(fixed, "nlvr", sd, fusion_layer=1, fix_momentum_init=True, verbose=False)
    assert torch.equal(fixed.visual_encoder_m.cls_token, fixed.visual_encoder.cls_token)
    assert torch.equal(fixed.visual_encoder.cls_token, ta.visual_encoder.cls_token)


def test_a_pretrained_file_with_a_wrong_key_is_refused():
    sd = ALBEF(small_config()).state_dict()
    sd["visual_encoder.norm.weightt"] = sd.pop("visual_encoder.norm.weight")
    with pytest.raises(CheckpointError, match="visual_encoder.norm.weight"):
        init_from_pretrained(create_model("ve", small_config()), "ve", sd, fusion_layer=2, verbose=False)


def test_deit_weights_initialise_the_vit(tmp_path):
    from albef_lab.models.checkpoint import load_deit
    from albef_lab.models.vit import VisionTransformer

    cfg = small_config().vision
    cfg.image_res = 48  # DeiT at 224 -> ALBEF at 256, in small: 3x3 -> 2x2 patches
    torch.manual_seed(0)
    deit = VisionTransformer(cfg)
    sd = deit.state_dict()
    sd["head.weight"], sd["head.bias"] = torch.zeros(10, 32), torch.zeros(10)
    torch.save({"model": sd}, tmp_path / "deit.pth")
    vit = VisionTransformer(small_config().vision)
    report = load_deit(vit, tmp_path / "deit.pth", verbose=False)
    assert report.clean and report.resized
    assert torch.equal(vit.blocks[1].mlp.fc2.weight, deit.blocks[1].mlp.fc2.weight)
    assert vit.pos_embed.shape == (1, 5, 32)


@pytest.mark.parametrize("fmt", ["safetensors", "bin"])
def test_bert_base_weights_initialise_text_encoders(tmp_path, fmt):
    from safetensors.torch import save_file

    from albef_lab.models.bert import BertForMaskedLM, BertModel
    from albef_lab.models.checkpoint import load_bert

    text = small_config().text
    torch.manual_seed(0)
    hf = BertForMaskedLM(text)  # stands for bert-base-uncased: same keys, no cross-attention
    sd = {k: v.clone() for k, v in hf.state_dict().items() if ".crossattention." not in k
          and k != "cls.predictions.decoder.weight"}
    sd["bert.pooler.dense.weight"] = torch.zeros(32, 32)
    sd["cls.seq_relationship.weight"] = torch.zeros(2, 32)
    folder = tmp_path / "bert-base-uncased"
    folder.mkdir()
    if fmt == "safetensors":
        save_file(sd, str(folder / "model.safetensors"))
    else:
        sd = {k.replace("LayerNorm.weight", "LayerNorm.gamma").replace("LayerNorm.bias", "LayerNorm.beta"): v
              for k, v in sd.items()}
        torch.save(sd, folder / "pytorch_model.bin")
    mlm = BertForMaskedLM(text)
    report = load_bert(mlm, folder, verbose=False)
    assert all(".crossattention." in k for k in report.missing) and report.missing
    assert torch.equal(mlm.bert.encoder.layer[3].output.dense.weight, hf.bert.encoder.layer[3].output.dense.weight)
    assert mlm.cls.predictions.decoder.weight is mlm.bert.embeddings.word_embeddings.weight
    assert torch.equal(mlm.cls.predictions.decoder.weight, hf.bert.embeddings.word_embeddings.weight)
    plain = BertModel(text)
    load_bert(plain, folder, verbose=False)
    assert torch.equal(plain.embeddings.LayerNorm.weight, hf.bert.embeddings.LayerNorm.weight)
    with pytest.raises(FileNotFoundError, match="no model.safetensors"):
        load_bert(plain, tmp_path)
