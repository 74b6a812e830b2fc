import copy

import pytest
import torch

from albef_lab.distributed import all_gather_nograd
from albef_lab.models.albef import ALBEF, PretrainDraws
from albef_lab.models.attention import attention_modules, capture_attention
from albef_lab.models.bert import BertForMaskedLM, BertLMHeadModel
from albef_lab.models.record import recording
from tests.helpers import batch, small_config


def make(**kw) -> ALBEF:
    torch.manual_seed(0)
    return ALBEF(small_config(**kw))


def run(model, seed=1, alpha=0.4, **kw):
    image, ids, mask = batch()
    return model(image, ids, mask, alpha, generator=torch.Generator().manual_seed(seed), **kw)


def test_forward_backward_updates_queue_and_momentum():
    model = make()
    ptr0 = int(model.queue_ptr)
    with torch.no_grad():
        model.visual_encoder.cls_token.add_(1.0)
    mom0 = model.visual_encoder_m.cls_token.clone()
    online0 = model.visual_encoder.cls_token.detach().clone()
    with recording() as rec:
        out = run(model)
    out["loss"].backward()
    assert all(torch.isfinite(v) for v in out.values())
    assert int(model.queue_ptr) == (ptr0 + 4) % 16
    assert torch.allclose(model.image_queue[:, :4], rec["image_feat_m"].T)
    assert torch.allclose(model.visual_encoder_m.cls_token, 0.995 * mom0 + 0.005 * online0)
    assert model.temp.grad is not None and model.itm_head.weight.grad is not None
    assert all(p.grad is None for n, p in model.named_parameters() if "_m." in n)


def test_tied_mlm_decoder_and_momentum_copy_keep_the_tie():
    model = make()
    for enc in (model.text_encoder, model.text_encoder_m):
        assert enc.cls.predictions.decoder.weight is enc.bert.embeddings.word_embeddings.weight
        assert enc.cls.predictions.decoder.bias is enc.cls.predictions.bias
    online = model.text_encoder.cls.predictions.decoder.weight
    assert online is not model.text_encoder_m.bert.embeddings.word_embeddings.weight


def test_same_generator_seed_gives_same_losses_and_different_seed_differs():
    a, b = make(), make()
    la, lb = run(a, seed=5), run(b, seed=5)
    assert all(torch.equal(la[k], lb[k]) for k in la)
    c = make()
    lc = run(c, seed=6)
    assert not torch.equal(la["loss_mlm"], lc["loss_mlm"]) or not torch.equal(la["loss_itm"], lc["loss_itm"])


def test_injected_draws_are_used():
    model = make()
    image, ids, mask = batch()
    neg_img = torch.tensor([1, 0, 3, 2])
    neg_txt = torch.tensor([2, 3, 0, 1])
    with recording() as rec:
        model(image, ids, mask, 0.0, draws=PretrainDraws(neg_img, neg_txt))
    assert torch.equal(rec["neg_image_idx"], neg_img) and torch.equal(rec["neg_text_idx"], neg_txt)


def test_sdpa_and_explicit_attention_agree_and_maps_have_gradients():
    model = make()
    m2 = copy.deepcopy(model)
    with capture_attention(*attention_modules(m2)) as captured:
        la, lb = run(model), run(m2)
    for k in la:
        assert torch.allclose(la[k], lb[k], rtol=1e-5, atol=1e-6), k
    cross = m2.text_encoder.bert.encoder.layer[2].crossattention.self
    vit_attn = m2.visual_encoder.blocks[-1].attn
    assert captured[cross] and captured[cross][0].shape[-1] == 5  # 1 CLS + 4 patches
    grads = torch.autograd.grad(lb["loss"], [captured[cross][0], captured[vit_attn][0]])
    assert all(g.abs().sum() > 0 for g in grads)


def test_gradient_checkpointing_gives_the_same_gradients(monkeypatch):
    import albef_lab.models.bert as bert_mod
    import albef_lab.models.vit as vit_mod

    calls = []
    for mod in (bert_mod, vit_mod):
        real = mod.checkpoint
        monkeypatch.setattr(mod, "checkpoint", lambda f, *a, _real=real, **k: calls.append(f) or _real(f, *a, **k))
    a = make()
    la = run(a)
    assert calls == []  # off by default
    b = make(grad_checkpointing=True)
    lb = run(b)
    assert len(calls) >= 2 + 4  # every ViT block and BERT layer of the online passes is checkpointed
    la["loss"].backward()
    lb["loss"].backward()
    ga = dict(a.named_parameters())
    for n, p in b.named_parameters():
        if p.grad is not None:
            assert torch.allclose(p.grad, ga[n].grad, rtol=1e-4, atol=1e-6), n


@pytest.mark.parametrize("switch", ["use_itc", "use_itm", "use_mlm"])
def test_objective_switches_remove_their_loss(switch):
    out = run(make(**{switch: False}))
    key = {"use_itc": "loss_ita", "use_itm": "loss_itm", "use_mlm": "loss_mlm"}[switch]
    assert out[key].item() == 0.0
    assert all(out[k].item() > 0 for k in ("loss_ita", "loss_itm", "loss_mlm") if k != key)


def test_hard_negative_switch_changes_the_negatives():
    with recording() as rec_h:
        run(make())
    with recording() as rec_r:
        run(make(hard_negatives=False))
    assert "weights_i2t" in rec_h and "weights_i2t" not in rec_r
    assert torch.all(rec_r["neg_image_idx"] != torch.arange(4))


def test_distill_switch_drops_the_teacher_mlm_pass():
    with recording() as rec:
        run(make(distill=False))
    assert "soft_labels" not in rec and "sim_i2t_m" in rec
    with recording() as rec:
        run(make())
    assert "soft_labels" in rec


def test_image_ids_make_duplicates_positives_and_never_negatives():
    model = make()
    with recording() as rec:
        run(model, image_ids=torch.tensor([0, 0, 1, 2]))
    assert rec["sim_targets"][0, 1] == 0.5 and rec["sim_targets"][1, 0] == 0.5
    assert rec["weights_i2t"][0, 1] == 0 and rec["weights_t2i"][1, 0] == 0


def test_mlm_nan_fix():
    model = make(mlm_probability=0.0)
    assert torch.isnan(run(model)["loss_mlm"])
    assert run(make(mlm_probability=0.0, fix_mlm_nan=True))["loss_mlm"].item() == 0.0


def test_gather_works_without_a_process_group():
    x = torch.randn(3, 4)
    assert all_gather_nograd(x) is x


def test_decoder_is_causal_and_encoder_is_not():
    cfg = small_config().text
    torch.manual_seed(0)
    dec = BertLMHeadModel(cfg)
    enc = BertForMaskedLM(cfg)
    enc.load_state_dict(dec.state_dict())
    ids = torch.randint(104, 120, (1, 6))
    states = torch.randn(1, 5, 32)
    changed = ids.clone()
    changed[0, 4] = 110 if ids[0, 4] != 110 else 111
    for model, same in ((dec, True), (enc, False)):
        a = model(ids, encoder_hidden_states=states)[0, :4]
        b = model(changed, encoder_hidden_states=states)[0, :4]
        assert torch.allclose(a, b, atol=1e-6) == same


def test_bad_inputs_give_clear_errors():
    model = make()
    image, ids, mask = batch()
    with pytest.raises(ValueError, match="batch mismatch"):
        model(image[:3], ids, mask)
    with pytest.raises(ValueError, match="patches"):
        model(torch.randn(4, 3, 64, 64), ids, mask)
    with pytest.raises(ValueError, match="max_position_embeddings"):
        long = torch.full((4, 40), 105)
        model(image, long, torch.ones_like(long))


def test_conv_stem_sees_across_patch_borders_and_the_default_keeps_vit_keys():
    """The conv stem gives the same tokens as the patch projection, but a pixel on a patch's border moves the
    neighbouring patch's token too (its 3x3 convolutions overlap); ViT's patch projection keeps patches apart.
    The default adds no key, so official checkpoints still load."""
    import dataclasses

    from albef_lab.models.vit import VisionTransformer

    base = small_config().vision
    vit = VisionTransformer(base)
    assert not any("stem" in k for k in vit.state_dict())
    assert vit.patch_embed.proj.kernel_size == (16, 16)
    stem = VisionTransformer(dataclasses.replace(base, conv_stem=True))
    assert any(k.startswith("patch_embed.stem.") for k in stem.state_dict())
    image = torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    nudged = image.clone()
    nudged[0, :, 0, 15] += 1.0  # the last column of patch (0, 0), next to patch (0, 1)
    for encoder, crosses in ((vit, False), (stem, True)):
        tokens = encoder.patch_embed(image), encoder.patch_embed(nudged)
        assert tokens[0].shape == (1, 4, 32)
        assert not torch.equal(tokens[0][0, 0], tokens[1][0, 0])  # the patch itself
        assert (not torch.allclose(tokens[0][0, 1], tokens[1][0, 1])) == crosses  # its right neighbour
    model = make(vision=dataclasses.replace(base, conv_stem=True))  # the whole model trains through the stem
    run(model)["loss"].backward()
    assert model.visual_encoder.patch_embed.stem[0].weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="power of 2"):
        VisionTransformer(dataclasses.replace(base, patch_size=12, image_res=36, conv_stem=True))
