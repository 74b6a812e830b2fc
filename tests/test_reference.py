"""Numerical equivalence with the original implementation (the golden fixtures)."""

import pytest
import torch

from albef_lab.cli import main
from albef_lab.config import preset
from albef_lab.models.factory import create_model, state_dict_tsv
from albef_lab.reference import format_checks, verify_file

FIXTURES = {"pretrain_A.pt": 42, "pretrain_B.pt": 42, "retrieval.pt": 46, "vqa.pt": 29, "vqa_nodistill.pt": 25,
            "nlvr.pt": 12, "ve.pt": 10, "pretrain_nlvr.pt": 11}
MODELS = {"pretrain": "model_pretrain", "retrieval": "model_retrieval", "grounding": "grounding__model_retrieval",
          "vqa": "model_vqa", "nlvr": "model_nlvr", "ve": "model_ve", "pretrain_nlvr": "model_pretrain_nlvr"}


@pytest.mark.parametrize("name", sorted(FIXTURES))
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_fixture_matches(reference, name, dtype):
    checks = verify_file(reference / "fixtures" / name, dtype)
    assert len(checks) == FIXTURES[name]  # every recorded quantity is compared
    assert all(c.ok for c in checks), format_checks(checks)


def test_verify_reference_cli_passes_and_catches_a_changed_value(reference, tmp_path, capsys):
    src = reference / "fixtures" / "pretrain_A.pt"
    assert main(["verify-reference", str(src)]) == 0
    out = capsys.readouterr().out
    assert "outputs.loss_total" in out and "PASS" in out and "FAIL" not in out

    fx = torch.load(src, weights_only=True)
    fx["outputs"]["loss_itm"] = fx["outputs"]["loss_itm"] * 1.001
    bad = tmp_path / "bad.pt"
    torch.save(fx, bad)
    assert main(["verify-reference", str(bad)]) == 1
    out = capsys.readouterr().out
    line = next(ln for ln in out.splitlines() if ln.startswith("outputs.loss_itm"))
    assert line.rstrip().endswith("FAIL")


def test_verify_reference_catches_a_changed_gradient(reference, tmp_path):
    fx = torch.load(reference / "fixtures" / "pretrain_B.pt", weights_only=True)
    g = fx["grads"]["text_encoder.bert.encoder.layer.2.crossattention.self.query.weight"]
    g[0, 0] += 0.01 * g.abs().max()
    bad = tmp_path / "bad_grad.pt"
    torch.save(fx, bad)
    checks = {c.name.split(" ")[0]: c for c in verify_file(bad)}
    assert not checks["grads"].ok and "crossattention.self.query.weight" in checks["grads"].detail
    assert checks["outputs.loss_total"].ok


@pytest.mark.parametrize("model", sorted(MODELS))
def test_state_dict_layout_equals_reference_keys(reference, model):
    expected = (reference / "keys" / f"{MODELS[model]}.tsv").read_text()
    cfg = preset("base").model
    cfg.vision.image_res = 256 if model.startswith("pretrain") else 384
    built = create_model(model, cfg, device="meta")
    assert state_dict_tsv(built) == expected


@pytest.mark.parametrize("model", sorted(MODELS))
def test_info_state_dict_cli_prints_the_reference_file(reference, capsys, model):
    assert main(["info", "--preset", "base", "--state-dict", model]) == 0
    assert capsys.readouterr().out == (reference / "keys" / f"{MODELS[model]}.tsv").read_text()


def test_info_prints_parameter_counts(capsys):
    assert main(["info", "--preset", "base"]) == 0
    out = capsys.readouterr().out
    assert "85,844,736" in out  # ViT-B/16 at 256 px: the paper's 85.8M
    assert "123,697,722" in out  # BERT-base + MLM head: the paper's 123.7M
    assert "209,937,725" in out  # trainable total of the reference model (keys/summary)
