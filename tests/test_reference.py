"""Numerical equivalence with the original implementation (the golden fixtures)."""

import json

import pytest
import torch

from albef_lab.cli import main
from albef_lab.config import preset
from albef_lab.models.factory import create_model, state_dict_tsv
from albef_lab.reference import format_checks, verify_file

# every fixture file and how many quantities its verification compares
FIXTURES = {"pretrain_A.pt": 42, "pretrain_B.pt": 42, "retrieval.pt": 46, "vqa.pt": 29, "vqa_nodistill.pt": 25,
            "nlvr.pt": 12, "ve.pt": 10, "pretrain_nlvr.pt": 11, "grounding.pt": 20, "pretrain_base.pt": 30,
            "randaugment.pt": 27}
FULL_SIZE = {"pretrain_base.pt"}  # the paper's size: about a minute per dtype on 2 cores
MODELS = {"pretrain": "model_pretrain", "retrieval": "model_retrieval", "grounding": "grounding__model_retrieval",
          "vqa": "model_vqa", "nlvr": "model_nlvr", "ve": "model_ve", "pretrain_nlvr": "model_pretrain_nlvr"}


def test_every_fixture_on_disk_is_checked(reference):
    assert sorted(p.name for p in (reference / "fixtures").glob("*.pt")) == sorted(FIXTURES)


@pytest.mark.parametrize("name", sorted(set(FIXTURES) - FULL_SIZE))
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


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(FULL_SIZE))
def test_full_size_fixture_matches(reference, name):
    checks = verify_file(reference / "fixtures" / name, torch.float32)
    assert len(checks) == FIXTURES[name]
    assert all(c.ok for c in checks), format_checks(checks)


def test_randaugment_matches_exactly_and_one_changed_pixel_fails(reference, tmp_path):
    """The original's augmentation, bit for bit: a copy with one output pixel moved by one fails that check only;
    the CLI reads the file's kind."""
    src = reference / "fixtures" / "randaugment.pt"
    assert main(["verify-reference", str(src)]) == 0
    fx = torch.load(src, weights_only=True)
    case = next(c for c in fx["cases"] if c["op"] == "Rotate" and c["args"][0] < 0)
    case["output"][10, 20, 1] = (case["output"][10, 20, 1] + 1) % 256
    fx["pipeline"][3]["applied"] = [{"op": "Rotate", "args": [-21.0]}]
    bad = tmp_path / "bad_randaugment.pt"
    torch.save(fx, bad)
    checks = {c.name: c for c in verify_file(bad)}
    assert [n for n, c in checks.items() if not c.ok] == ["cases.Rotate-", "pipeline.seed3"]
    assert checks["cases.Rotate-"].max_abs == 1.0 and "applied" in checks["pipeline.seed3"].detail
    assert main(["verify-reference", str(bad)]) == 1


def test_a_changed_gradcam_value_fails_the_grounding_check(reference, tmp_path):
    fx = torch.load(reference / "fixtures" / "grounding.pt", weights_only=True)
    fx["itm"]["gradcam"][1, 5, 7] += 0.05 * fx["itm"]["gradcam"].abs().max()
    fx["ranking"]["outputs"]["bump"]["hit_per_ref"][2] = False
    bad = tmp_path / "bad_grounding.pt"
    torch.save(fx, bad)
    checks = {c.name: c for c in verify_file(bad)}
    assert not checks["itm.gradcam"].ok and not checks["ranking.bump.hit_per_ref"].ok
    assert checks["itc.gradcam"].ok and checks["itm.attention_map"].ok


def test_generated_weights_follow_the_rule(reference):
    """The weight rule of pretrain_base.pt, checked on its recorded samples without building the big model."""
    from albef_lab.reference import generated_weights

    fx = torch.load(reference / "fixtures" / "pretrain_base.pt", weights_only=True)
    rows = [ln.split("\t") for ln in (reference / "keys" / "model_pretrain.tsv").read_text().splitlines()]
    shapes = {k: torch.Size(json.loads(s)) for k, s, dtype in rows if dtype == "float32" and k != "temp"}
    wanted = set(fx["weights_check"])
    online = {".".join([w.split(".")[0].removesuffix("_m"), *w.split(".")[1:]]) for w in wanted}
    needed = {k: shapes[k] for k in wanted | online}  # a momentum value derives from its online value
    values = generated_weights(needed, fx["config"]["weights"]["seed"])
    for k, ref in fx["weights_check"].items():
        v = values[k].float().double()
        assert v.norm().item() == pytest.approx(ref["norm"], rel=1e-6), k
        assert torch.allclose(v.flatten()[:8], ref["first"], rtol=1e-6, atol=1e-7), k


@pytest.mark.slow
def test_changed_loss_fails_the_full_size_check_without_running_the_model(reference, tmp_path):
    """A wrong weight rebuild stops before the step: a changed weights_check value fails at once."""
    fx = torch.load(reference / "fixtures" / "pretrain_base.pt", weights_only=True)
    fx["weights_check"]["image_queue"]["norm"] *= 1.01
    bad = tmp_path / "bad_base.pt"
    torch.save(fx, bad)
    checks = verify_file(bad)
    assert len(checks) == 1 and not checks[0].ok and "image_queue" in checks[0].detail


def test_the_originals_constants_are_ours(reference):
    """Constants the fixtures cannot resolve (their float32 rounding is ~1e-5 relative, and a BERT LayerNorm eps of
    1e-5 for 1e-12 moves these activations by less) or never exercise (mask fills below about -100 give the same
    softmax; the clamp bounds of a temperature of 0.07), checked directly: LayerNorm eps of each encoder, the
    attention scale, exact GELU, the mask fills, the temperature clamp."""
    import math

    import torch.nn.functional as F

    from albef_lab.config import model_config_from_reference
    from albef_lab.models.albef import ALBEF
    from albef_lab.models.attention import attend, capture_attention
    from albef_lab.models.bert import BertIntermediate, cross_attention_mask, self_attention_mask
    from albef_lab.models.vit import Mlp

    c = torch.load(reference / "fixtures" / "pretrain_A.pt", weights_only=True)["config"]
    cfg = model_config_from_reference(c["model_config"], c["bert_config"], c["vit"])
    model = ALBEF(cfg)
    norms = [(n, m.eps) for n, m in model.named_modules() if isinstance(m, torch.nn.LayerNorm)]
    assert {eps for n, eps in norms if n.startswith("visual_encoder")} == {1e-6}
    assert {eps for n, eps in norms if n.startswith("text_encoder")} == {c["bert_config"]["layer_norm_eps"]} == {1e-12}

    g = torch.Generator().manual_seed(0)
    q, k, v = (torch.randn(2, 3, 5, 8, generator=g, dtype=torch.float64) for _ in range(3))
    mask = torch.zeros(2, 1, 1, 5, dtype=torch.float64)
    mask[0, ..., -2:] = -10000.0
    by_hand = ((q @ k.transpose(-1, -2)) / math.sqrt(8) + mask).softmax(-1) @ v
    attn = model.visual_encoder.blocks[0].attn
    assert torch.allclose(attend(attn, q, k, v, mask, 0.0), by_hand, atol=1e-12)
    with capture_attention(attn):
        assert torch.allclose(attend(attn, q, k, v, mask, 0.0), by_hand, atol=1e-12)

    x = torch.randn(4, cfg.text.hidden_size, generator=g)
    exact = lambda y: 0.5 * y * (1 + torch.erf(y / math.sqrt(2)))  # noqa: E731
    inter = next(m for m in model.modules() if isinstance(m, BertIntermediate))
    assert torch.allclose(inter(x), exact(inter.dense(x)), atol=1e-6)
    assert not torch.allclose(exact(inter.dense(x)), F.gelu(inter.dense(x), approximate="tanh"), atol=1e-6)
    mlp = next(m for m in model.modules() if isinstance(m, Mlp))
    xv = torch.randn(4, cfg.vision.width, generator=g)
    assert torch.allclose(mlp(xv), mlp.fc2(exact(mlp.fc1(xv))), atol=1e-6)

    pad = torch.tensor([[1, 1, 0]])
    assert self_attention_mask(pad, torch.float32)[0, 0, 0].tolist() == [0.0, 0.0, -10000.0]
    assert cross_attention_mask(pad, torch.float64)[0, 0, 0].tolist() == [0.0, 0.0, -1e9]

    image = torch.randn(2, 3, cfg.vision.image_res, cfg.vision.image_res, generator=g)
    ids = torch.tensor([[101, 200, 201], [101, 202, 0]])
    model.cfg.use_itm = model.cfg.use_mlm = False  # the clamp comes first; ITC alone reaches it
    for start, clamped in ((0.9, 0.5), (1e-5, 0.001), (0.2, 0.2)):
        with torch.no_grad():
            model.temp.fill_(start)
        model(image, ids, (ids != 0).long(), 0.0)
        assert model.temp.item() == pytest.approx(clamped)
