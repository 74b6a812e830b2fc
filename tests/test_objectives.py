import math

import pytest
import torch

from albef_lab.objectives.distill import copy_params, mix_targets, momentum_update, soft_cross_entropy
from albef_lab.objectives.itc import diagonal_targets, enqueue, itc_loss, same_image_targets
from albef_lab.objectives.itm import negative_weights, random_negatives, sample_negatives
from albef_lab.objectives.mlm import apply_mask, draw_mask, mlm_loss


def test_mask_rule_never_touches_pad_or_cls_and_keeps_proportions():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(200, 500, (400, 30), generator=g)
    ids[:, 0] = 101
    ids[:, 25:] = 0
    draws = draw_mask(ids.shape, 0.15, 512, generator=g)
    masked, labels = apply_mask(ids, draws, pad_id=0, cls_id=101, mask_id=103)
    sel = labels != -100
    assert not sel[:, 0].any() and not sel[:, 25:].any()
    frac = sel.float().sum() / (400 * 24)
    assert abs(frac - 0.15) < 0.01
    assert torch.equal(labels[sel], ids[sel])
    to_mask = (masked == 103) & sel
    assert abs(to_mask.sum() / sel.sum() - 0.8) < 0.03
    unchanged = (masked == ids) & sel
    assert abs(unchanged.sum() / sel.sum() - 0.1) < 0.03
    assert torch.equal(masked[~sel], ids[~sel])


def test_mask_draws_come_from_the_generator():
    a = draw_mask((4, 9), 0.3, 100, generator=torch.Generator().manual_seed(1))
    b = draw_mask((4, 9), 0.3, 100, generator=torch.Generator().manual_seed(1))
    c = draw_mask((4, 9), 0.3, 100, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a.select, b.select) and torch.equal(a.random_words, b.random_words)
    assert not torch.equal(a.random_words, c.random_words)


def test_mlm_loss_nan_when_nothing_masked_unless_fixed():
    logits = torch.randn(2, 5, 11, requires_grad=True)
    labels = torch.full((2, 5), -100)
    assert torch.isnan(mlm_loss(logits, labels))
    fixed = mlm_loss(logits, labels, torch.softmax(torch.randn(2, 5, 11), -1), 0.4, empty_is_zero=True)
    assert fixed.item() == 0.0
    fixed.backward()
    assert logits.grad is not None


def test_mlm_loss_mixes_hard_and_soft_terms():
    logits = torch.randn(2, 4, 7)
    labels = torch.tensor([[-100, 3, -100, 1], [2, -100, -100, -100]])
    soft = torch.softmax(torch.randn(2, 4, 7), -1)
    keep = labels != -100
    ce = torch.nn.functional.cross_entropy(logits[keep], labels[keep])
    distill = soft_cross_entropy(logits[keep], soft[keep]).mean()
    assert torch.allclose(mlm_loss(logits, labels, soft, 0.3), 0.7 * ce + 0.3 * distill)


def test_negative_weights_exclude_positives_and_sampling_respects_them():
    sim = torch.randn(6, 20)
    w = negative_weights(sim)
    assert torch.all(w.diagonal() == 0) and w.shape == (6, 6)
    same = torch.eye(6, dtype=torch.bool)
    same[0, 1] = same[1, 0] = True
    w = negative_weights(sim, same)
    g = torch.Generator().manual_seed(0)
    for _ in range(50):
        idx = sample_negatives(w, g)
        assert torch.all(idx != torch.arange(6))
        assert idx[0] != 1 and idx[1] != 0
    with pytest.raises(ValueError, match="at least 2"):
        negative_weights(torch.randn(1, 5))
    all_same = torch.ones(3, 3, dtype=torch.bool)
    with pytest.raises(ValueError, match="no candidate negative"):
        sample_negatives(negative_weights(torch.randn(3, 3), all_same))


def test_random_negatives_are_never_the_positive():
    idx = random_negatives(5, torch.Generator().manual_seed(0))
    assert torch.all(idx != torch.arange(5)) and idx.max() < 5


def test_itc_targets_and_loss():
    t = diagonal_targets(3, 7)
    assert t.dtype == torch.float32 and torch.equal(t[:, :3], torch.eye(3)) and t[:, 3:].sum() == 0
    idx = torch.tensor([7, 3, 7])
    t = same_image_targets(idx, torch.tensor([7, 3, 7, 1, 7]))
    assert torch.allclose(t[0], torch.tensor([1 / 3, 0, 1 / 3, 0, 1 / 3]))
    f = torch.nn.functional.normalize(torch.randn(3, 8), dim=-1)
    all_ = torch.nn.functional.normalize(torch.randn(8, 5), dim=0)
    out = itc_loss(f, f, all_, all_, torch.tensor(0.07), diagonal_targets(3, 5))
    manual = -(torch.log_softmax(f @ all_ / 0.07, 1) * diagonal_targets(3, 5)).sum(1).mean()
    assert torch.allclose(out["loss"], manual)
    mixed = itc_loss(f, f, all_, all_, torch.tensor(0.07), diagonal_targets(3, 5), f @ all_, f @ all_, alpha=0.4)
    assert torch.allclose(mixed["sim_i2t_targets"], mix_targets(f @ all_, diagonal_targets(3, 5), 0.4))
    assert torch.allclose(mixed["sim_i2t_targets"].sum(1), torch.ones(3))


def test_enqueue_wraps_and_checks_the_batch_size():
    q = torch.zeros(4, 8)
    feats = torch.arange(8.0).view(2, 4)
    ptr = enqueue(q, feats, 6)
    assert ptr == 0 and torch.equal(q[:, 6:], feats.T)
    with pytest.raises(ValueError, match="multiple"):
        enqueue(q, torch.zeros(3, 4), 0)


def test_momentum_update_is_an_ema_and_copy_params_freezes():
    a, b = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    copy_params([(a, b)])
    assert torch.equal(a.weight, b.weight) and not b.weight.requires_grad
    with torch.no_grad():
        a.weight.add_(1.0)
    before = b.weight.clone()
    momentum_update([(a, b)], 0.9)
    assert torch.allclose(b.weight, 0.9 * before + 0.1 * a.weight)
    assert math.isclose(b.bias[0].item(), a.bias[0].item(), rel_tol=1e-6)
