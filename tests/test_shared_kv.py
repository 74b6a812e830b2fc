"""Cross-attention keys/values computed once per image (or question) give the numbers of the per-pair path."""

import copy

import pytest
import torch

from albef_lab.eval.retrieval import rerank_scores
from albef_lab.models.albef import ALBEF
from albef_lab.models.tasks import ALBEFVQA, ALBEFRetrieval
from tests.helpers import batch, small_config


def both(model):
    """The same model twice: keys/values shared, and the per-pair path of before."""
    other = copy.deepcopy(model)
    other.cfg = copy.deepcopy(model.cfg)
    model.cfg.share_cross_kv, other.cfg.share_cross_kv = True, False
    return model, other


def same_step(a, b, loss_atol: float) -> None:
    """One training step of each from the same batch and draws: equal losses and every gradient."""
    image, ids, mask = batch()
    outs = []
    for m in (a, b):
        out = m(image, ids, mask, 0.4, generator=torch.Generator().manual_seed(3))
        out["loss"].backward()
        outs.append(out)
    for k in outs[0]:
        assert torch.allclose(outs[0][k], outs[1][k], rtol=1e-5, atol=loss_atol), k
    grads = dict(b.named_parameters())
    for name, p in a.named_parameters():
        if p.grad is not None:  # the gradient reaches the key/value weights through the shared computation
            assert torch.allclose(p.grad, grads[name].grad, rtol=1e-4, atol=loss_atol), name


@pytest.mark.parametrize("ckpt", [False, True])
def test_pretraining_losses_and_gradients_match_the_per_pair_path(ckpt):
    torch.manual_seed(0)
    shared, per_pair = both(ALBEF(small_config(grad_checkpointing=ckpt)))
    same_step(shared, per_pair, loss_atol=1e-6)
    cross_key = shared.text_encoder.bert.encoder.layer[2].crossattention.self.key.weight
    assert cross_key.grad is not None and cross_key.grad.abs().sum() > 0


def test_fusion_computes_each_images_keys_values_once(monkeypatch):
    torch.manual_seed(0)
    model = ALBEF(small_config()).eval()
    image, ids, mask = batch()
    seen = []
    layer = model.text_encoder.bert.encoder.layer[2].crossattention.self
    real = layer.key.forward
    monkeypatch.setattr(layer.key, "forward", lambda x: seen.append(x.shape[0]) or real(x))
    img, _ = model.encode_image(image)
    txt, _ = model.encode_text(ids, mask)
    index = torch.tensor([0, 1, 2, 3, 1, 0, 3, 2, 0, 1, 2, 3])
    model.itm_logits(txt[index % 4], mask[index % 4], img, image_index=index)
    assert seen == [4]  # 4 images for 12 rows
    model.cfg.share_cross_kv = False
    model.itm_logits(txt[index % 4], mask[index % 4], img, image_index=index)
    assert seen == [4, 12]


def test_retrieval_rankings_are_identical():
    torch.manual_seed(0)
    shared, per_pair = both(ALBEFRetrieval(small_config()).eval())
    image, _, _ = batch(b=6, seed=1)
    _, ids, mask = batch(b=10, length=12, seed=2)  # 3 to 12 tokens: batches of similar length, cut short
    with torch.no_grad():
        img, img_feat = shared.encode_image(image)
        txt, txt_feat = shared.encode_text(ids, mask)
        a = rerank_scores(shared, img, img_feat, txt, mask, txt_feat, k=3, batch_size=5)
        b = rerank_scores(per_pair, img, img_feat, txt, mask, txt_feat, k=3, batch_size=5)
    for x, y in zip(a, b, strict=True):
        assert torch.equal(x.topk(3).indices, y.topk(3).indices)
        assert torch.allclose(x, y, atol=1e-5)
        assert (x > -100).sum() == x.shape[0] * 3  # exactly k candidates per query scored


def test_vqa_ranking_and_training_match_the_per_question_copies():
    torch.manual_seed(0)
    shared, per_pair = both(ALBEFVQA(small_config(decoder_layers=2)))
    shared.eval(), per_pair.eval()
    image, ids, mask = batch(b=2)
    answers = torch.tensor([[101, 104 + i, 105 + i % 3, 102] for i in range(7)])
    a_mask = torch.ones_like(answers)
    ra, rb = (m.rank_answers(image, ids[:2], mask[:2], answers, a_mask, 5) for m in (shared, per_pair))
    assert torch.equal(ra[0], rb[0]) and torch.allclose(ra[1], rb[1], atol=1e-6)
    shared.train(), per_pair.train()
    la, lb = (m(image, ids[:2], mask[:2], answers[:5], a_mask[:5], [2, 3], torch.ones(5), 0.3)
              for m in (shared, per_pair))
    assert torch.allclose(la, lb, rtol=1e-5)
    la.backward()
    lb.backward()
    grads = dict(per_pair.named_parameters())
    compared = 0
    for name, p in shared.named_parameters():  # every gradient, the question states' way back included
        other = grads[name].grad
        assert (p.grad is None) == (other is None), name
        if p.grad is not None:
            assert torch.allclose(p.grad, other, rtol=1e-4, atol=1e-6), name
            compared += 1
    assert shared.text_encoder.encoder.layer[-1].crossattention.self.key.weight.grad.abs().sum() > 0
    assert compared == sum(p.requires_grad for p in shared.parameters())


def test_token_nll_equals_the_full_head_nll_with_padding():
    from albef_lab.objectives.lm import answer_nll, token_nll

    g = torch.Generator().manual_seed(0)
    head = torch.nn.Linear(8, 110)
    hidden = torch.randn(3, 5, 8, generator=g)
    targets = torch.tensor([[101, 4, 102, -100, -100], [101, 3, 7, 2, 102], [101, 102, -100, -100, -100]])
    assert torch.allclose(token_nll(head, hidden[:, :-1], targets[:, 1:]), answer_nll(head(hidden), targets),
                          atol=1e-6)


def test_streamed_image_states_give_the_held_scores_and_hold_one_chunk(monkeypatch):
    """`data.stream_images`: the ViT runs again per chunk of images (never on all at once), same scores."""
    from albef_lab.eval.retrieval import StreamedImageStates, match_logits

    class Images(torch.utils.data.Dataset):
        def __init__(self, x):
            self.x = x

        def __len__(self):
            return len(self.x)

        def __getitem__(self, i):
            return self.x[i], i

    torch.manual_seed(0)
    model = ALBEFRetrieval(small_config()).eval()
    image, _, _ = batch(b=7, seed=1)
    _, ids, mask = batch(b=12, length=12, seed=2)
    with torch.no_grad():
        img, img_feat = model.encode_image(image)
        txt, txt_feat = model.encode_text(ids, mask)
        held = rerank_scores(model, img, img_feat, txt, mask, txt_feat, k=4)
        sizes, real = [], model.encode_image
        monkeypatch.setattr(model, "encode_image", lambda x: sizes.append(len(x)) or real(x))
        streamed = StreamedImageStates(model, Images(image), torch.device("cpu"))
        pairs = torch.tensor([[i, j] for i in range(7) for j in range(12)])
        a = match_logits(model, pairs, streamed, txt, mask, images_per_chunk=3)
        assert sizes == [3, 3, 1]
        b = rerank_scores(model, streamed, img_feat, txt, mask, txt_feat, k=4)
    assert torch.allclose(a, match_logits(model, pairs, img, txt, mask), atol=1e-5)
    for x, y in zip(held, b, strict=True):
        assert torch.equal(x.topk(4).indices, y.topk(4).indices) and torch.allclose(x, y, atol=1e-5)
    model.cfg.share_cross_kv = False
    with pytest.raises(ValueError, match="share_cross_kv=true"):
        match_logits(model, pairs, streamed, txt, mask)


def test_retrieval_chunks_compute_keys_values_once_per_image_and_layer(monkeypatch):
    from albef_lab.eval.retrieval import match_logits

    torch.manual_seed(0)
    shared, per_pair = both(ALBEFRetrieval(small_config()).eval())
    image, _, _ = batch(b=5, seed=1)
    _, ids, mask = batch(b=8, length=12, seed=2)
    pairs = torch.tensor([[i, j] for i in range(5) for j in range(8)])  # 40 pairs, 3 batches per chunk of 2 images
    seen = []
    layer = shared.text_encoder.encoder.layer[-1].crossattention.self
    real = layer.key.forward
    monkeypatch.setattr(layer.key, "forward", lambda x: seen.append(x.shape[0]) or real(x))
    with torch.no_grad():
        img, _ = shared.encode_image(image)
        txt, _ = shared.encode_text(ids, mask)
        a = match_logits(shared, pairs, img, txt, mask, batch_size=7, images_per_chunk=2)
        b = match_logits(per_pair, pairs, img, txt, mask, batch_size=7)
    assert seen == [2, 2, 1]  # chunks of 2, 2 and 1 images: once each, however many batches
    assert torch.allclose(a, b, atol=1e-5)


def test_itm_score_computes_cls_only_in_the_last_layer_unless_attention_is_kept():
    from albef_lab.models.attention import capture_attention

    torch.manual_seed(0)
    model = ALBEF(small_config()).eval()
    image, ids, mask = batch()
    with torch.no_grad():
        img, _ = model.encode_image(image)
        txt, _ = model.encode_text(ids, mask)
        first = model.fusion(txt, mask, img, first_only=True)
        full = model.fusion(txt, mask, img)
        assert first.shape[1] == 1 and full.shape[1] == ids.shape[1]
        assert torch.allclose(first[:, 0], full[:, 0], atol=1e-5)
        last = model.text_encoder.bert.encoder.layer[-1].crossattention.self
        with capture_attention(last) as captured:  # Grad-CAM reads every token's map of the layer: in full
            model.itm_logits(txt, mask, img)
        assert captured[last][0].shape[2] == ids.shape[1]


def test_decoding_after_a_recorded_prefix_equals_decoding_the_whole_sequence():
    from albef_lab.models.bert import Prefix, Shared

    torch.manual_seed(0)
    model = ALBEFVQA(small_config(decoder_layers=2)).eval()
    bert = model.text_decoder.bert
    g = torch.Generator().manual_seed(1)
    states, q_mask = torch.randn(2, 5, 32, generator=g), torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 1]])
    seq = torch.tensor([[101, 110, 111, 102, 0], [101, 112, 102, 0, 0], [101, 113, 114, 115, 102]])
    seq_mask = (seq != 0).long()
    index = torch.tensor([0, 1, 1])
    with torch.no_grad():
        full = bert(seq, seq_mask, encoder_hidden_states=states[index], encoder_attention_mask=q_mask[index],
                    causal=True)
        prefix = Prefix()
        head = bert(seq[:2, :1], None, encoder_hidden_states=states, encoder_attention_mask=q_mask, causal=True,
                    prefix=prefix)
        rest = bert(seq[:, 1:], seq_mask[:, 1:], encoder_hidden_states=states, encoder_attention_mask=q_mask,
                    causal=True, shared=Shared(index), prefix=Prefix(prefix.kv, index))
    assert torch.allclose(head[index], full[:, :1], atol=1e-5)
    real = seq_mask[:, 1:].bool()  # padding rows are not compared: nothing reads them
    assert torch.allclose(rest[real], full[:, 1:][real], atol=1e-5)


def test_vqa_ranking_with_answers_of_mixed_lengths_matches_the_full_decoding():
    torch.manual_seed(0)
    shared, per_pair = both(ALBEFVQA(small_config(decoder_layers=2)))
    shared.eval(), per_pair.eval()
    image, ids, mask = batch(b=2)
    words = [[104], [105, 106], [107, 108, 109], [], [110], [111, 104], [112, 113, 114], [115]]
    answers = torch.zeros(len(words), 6, dtype=torch.long)
    for i, w in enumerate(words):  # [CLS] words [SEP] padding; one answer has no word at all
        answers[i, : len(w) + 2] = torch.tensor([101, *w, 102])
    a_mask = (answers != 0).long()
    for fix in (False, True):
        ra, rb = (m.rank_answers(image, ids[:2], mask[:2], answers, a_mask, 6, fix_double_count=fix)
                  for m in (shared, per_pair))
        assert torch.equal(ra[0], rb[0]) and torch.allclose(ra[1], rb[1], atol=1e-6)
    one = answers[[3, 3]], a_mask[[3, 3]]  # a list whose every answer is empty: nothing after the first token
    ra, rb = (m.rank_answers(image, ids[:2], mask[:2], *one, 2) for m in (shared, per_pair))
    assert torch.allclose(ra[1], rb[1], atol=1e-6)


@pytest.mark.parametrize("distill", [True, False])
def test_mlm_head_at_masked_positions_only_gives_the_same_loss_and_gradients(distill, monkeypatch):
    """The vocabulary head (student and teacher) runs on the masked rows only: same losses and gradients as at
    every position, and the head really sees fewer rows."""
    torch.manual_seed(0)
    masked = ALBEF(small_config(distill=distill, mlm_masked_only=True))
    everywhere = copy.deepcopy(masked)
    everywhere.cfg = copy.deepcopy(masked.cfg)
    everywhere.cfg.mlm_masked_only = False
    image, ids, mask = batch()
    rows = []
    head = masked.text_encoder.cls.predictions.decoder
    real = head.forward
    monkeypatch.setattr(head, "forward", lambda x: rows.append(x.shape[:-1].numel()) or real(x))
    same_step(masked, everywhere, loss_atol=1e-7)
    assert 0 < rows[0] < ids.numel() * 0.5  # about 15 % of the tokens


def test_mlm_with_nothing_masked_is_nan_as_the_original_or_zero_with_the_fix():
    torch.manual_seed(0)
    image, ids, mask = batch()
    for fix, check in ((False, torch.isnan), (True, lambda x: x == 0)):
        model = ALBEF(small_config(mlm_probability=0.0, fix_mlm_nan=fix))
        out = model(image, ids, mask, 0.4, generator=torch.Generator().manual_seed(3))
        assert check(out["loss_mlm"]), (fix, out["loss_mlm"])
