"""Numerical equivalence with the original implementation (the golden fixtures)."""

import pytest
import torch

from albef_lab.cli import main
from albef_lab.config import preset
from albef_lab.models.factory import create_model, state_dict_tsv
from albef_lab.reference import format_checks, verify_file

PRETRAIN = ["pretrain_A.pt", "pretrain_B.pt"]


@pytest.mark.parametrize("name", PRETRAIN)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_pretrain_fixture_matches(reference, name, dtype):
    checks = verify_file(reference / "fixtures" / name, dtype)
    assert len(checks) >= 40
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


@pytest.mark.parametrize("model", ["pretrain"])
def test_state_dict_layout_equals_reference_keys(reference, model):
    expected = (reference / "keys" / f"model_{model}.tsv").read_text()
    built = create_model(model, preset("base").model, device="meta")
    assert state_dict_tsv(built) == expected


def test_info_state_dict_cli_prints_the_reference_file(reference, capsys):
    assert main(["info", "--preset", "base", "--state-dict", "pretrain"]) == 0
    assert capsys.readouterr().out == (reference / "keys" / "model_pretrain.tsv").read_text()


def test_info_prints_parameter_counts(capsys):
    assert main(["info", "--preset", "base"]) == 0
    out = capsys.readouterr().out
    assert "85,844,736" in out  # ViT-B/16 at 256 px: the paper's 85.8M
    assert "123,697,722" in out  # BERT-base + MLM head: the paper's 123.7M
    assert "209,937,725" in out  # trainable total of the reference model (keys/summary)
