"""ITM's false negatives (a 'negative' caption that is true of the image) and the recipe's sampler that never draws
them, the held-out ITM negatives, and the image-blind control of evaluations."""

import random
from pathlib import Path

import pytest
import torch

from albef_lab.data.datasets import BlindImages
from albef_lab.eval.retrieval import itm_negatives
from albef_lab.models.albef import ALBEF
from albef_lab.models.record import recording
from albef_lab.objectives.itm import negative_weights
from albef_lab.shapesworld import world as W
from albef_lab.shapesworld.negatives import SceneGraphNegatives, known_matches, without_known
from tests.helpers import batch, load_module, small_config

DIAGNOSIS = load_module(Path(__file__).resolve().parents[1] / "scripts" / "itm_diagnosis.py")


def matches_all_but(b: int, allowed: list[int]) -> torch.Tensor:
    """Every pair 'known to match' except (i, allowed[i]): the filter can then draw only that column."""
    m = torch.ones(b, b, dtype=torch.bool)
    for i, j in enumerate(allowed):
        m[i, j] = False
    return m


@pytest.mark.parametrize("uniform", [0.0, 1.0])
def test_the_filter_never_draws_a_known_match_and_the_stat_counts_them(uniform):
    torch.manual_seed(0)
    b = 8
    allowed = [(i + 2) % b for i in range(b)]
    matches = matches_all_but(b, allowed)
    image, ids, mask = batch(b)
    model = ALBEF(small_config())
    with recording() as rec:
        out = model(image, ids, mask, 0.0, generator=torch.Generator().manual_seed(1),
                    negatives=SceneGraphNegatives(matches, exclude=True, uniform=uniform))
    assert rec["neg_image_idx"].tolist() == allowed  # text i: the one image not known to match it
    assert rec["neg_text_idx"].tolist() == [allowed.index(j) for j in range(b)]  # image j: the one text
    assert out["itm_false_neg"].item() == 0.0
    # the original's draw among all: nearly every draw here is a known match
    out = model(image, ids, mask, 0.0, generator=torch.Generator().manual_seed(1),
                negatives=SceneGraphNegatives(matches, exclude=False, uniform=uniform))
    assert out["itm_false_neg"].item() > 0.5


def test_without_scene_graphs_the_sampler_draws_as_the_paper():
    torch.manual_seed(0)
    model = ALBEF(small_config())
    same = ALBEF(small_config())
    same.load_state_dict(model.state_dict())  # a step moves the teacher and the queues: two copies of one state
    image, ids, mask = batch(4)
    a = model(image, ids, mask, 0.0, generator=torch.Generator().manual_seed(3),
              negatives=SceneGraphNegatives(None, exclude=True))
    b = same(image, ids, mask, 0.0, generator=torch.Generator().manual_seed(3))
    assert "itm_false_neg" not in a and torch.equal(a["loss"], b["loss"])


def test_a_row_with_nothing_but_matches_keeps_its_weights():
    sim = torch.randn(3, 3)
    known = torch.tensor([[True, True, True], [False, False, True], [False, False, False]])
    w = without_known(negative_weights(sim, None), known)
    assert w[0].sum() > 0 and torch.equal(w[0], negative_weights(sim)[0])  # nothing left: unfiltered
    assert w[1, 2] == 0 and w[1, 0] > 0


def test_the_recipes_task_passes_its_scene_matches_and_weighs_itm(tmp_path):
    from albef_lab.data.tokenizer import load_tokenizer
    from albef_lab.shapesworld import load_config
    from albef_lab.shapesworld.tasks import ShapesWorldPretrainTask
    from tests.helpers import make_world

    world = make_world(tmp_path / "w", images=20, seed=2)
    cfg = load_config(None, [f"data.root={world}"], "tiny")
    task = ShapesWorldPretrainTask(cfg, load_tokenizer(world / "vocab"))
    ds = task.train_set()
    seen = {}

    def net(images, ids, mask, alpha, generator=None, image_ids=None, negatives=None):
        seen.update(negatives=negatives)
        one = torch.tensor(1.0)
        return {"loss": 3 * one, "loss_ita": one, "loss_itm": one, "loss_mlm": one}

    items = [ds[i] for i in range(6)]
    captions = [c for _, c, _ in items]
    index = torch.tensor([k for _, _, k in items])
    out = task.forward(net, (torch.zeros(6, 3, 64, 64), captions, index), 0.0, None, torch.device("cpu"))
    assert out["loss"].item() == 1 + 3.0 + 1  # shapesworld.itm_weight = 3
    negatives = seen["negatives"]
    assert negatives.exclude and negatives.uniform == 0.5  # the tiny recipe's
    scenes = [task.scenes[k] for k in index.tolist()]
    for i, c in enumerate(captions):
        assert negatives.matches[i, i]  # every caption is true of its own (maybe flipped) image
        for j, sc in enumerate(scenes):
            either = W.caption_holds(sc, c) or W.caption_holds(sc.mirrored(), c)  # the flip swaps left/right
            assert bool(negatives.matches[i, j]) == either


def test_mirrored_scene_swaps_left_and_right():
    swap = {"to the left of": "to the right of", "to the right of": "to the left of"}
    checked = 0
    for i in range(40):
        sc = W.make_scene(i, 0)
        mirror = {o.phrase(): o for o in sc.mirrored().objects}
        for a, rel, b in W.relations(sc):
            assert W.relation_holds(mirror[a.phrase()], mirror[b.phrase()], swap.get(rel, rel))
            checked += 1
    assert checked > 50


def test_known_matches_find_shared_captions():
    a, b = W.make_scene(0, 0), W.make_scene(1, 0)
    cap = f"{W.NUMBERS[len(b.objects)]} {'shape' if len(b.objects) == 1 else 'shapes'}"
    m = known_matches([cap], [a, b])
    assert m[0][1] and m[0][0] == (len(a.objects) == len(b.objects))


def test_held_out_itm_negatives_avoid_true_captions_and_pick_the_hardest():
    img2txt = {0: [0, 1], 1: [2, 3], 2: [4, 5]}
    sims = torch.tensor([[9., 9., 5., 7., 1., 0.],
                         [3., 0., 9., 9., 8., 2.],
                         [6., 1., 0., 0., 9., 9.]])
    random_neg, hard_neg = itm_negatives(sims, img2txt)
    assert random_neg.tolist() == [2, 4, 0] and hard_neg.tolist() == [3, 4, 0]
    truth = torch.zeros(3, 6, dtype=torch.bool)
    truth[0, 3] = truth[0, 2] = truth[2, 0] = True  # caption 3 (and 2) is true of image 0 too
    random_neg, hard_neg = itm_negatives(sims, img2txt, truth)
    assert random_neg.tolist() == [4, 4, 2] and hard_neg.tolist() == [4, 4, 1]


class Items(torch.utils.data.Dataset):
    def __len__(self):
        return 5

    def __getitem__(self, i):
        return torch.full((3, 2, 2), float(i + 1)), f"text {i}", i


def test_blind_images_shuffle_keeps_texts_and_labels_and_moves_every_image():
    ds = BlindImages(Items(), "shuffle", seed=0)
    seen = []
    for i in range(len(ds)):
        img, text, label = ds[i]
        assert text == f"text {i}" and label == i
        assert img[0, 0, 0].item() != i + 1  # never its own image
        seen.append(img[0, 0, 0].item())
    assert sorted(seen) == [1, 2, 3, 4, 5]  # a permutation: each image used once
    blank = BlindImages(Items(), "blank")
    assert blank[3][0].abs().sum() == 0 and blank[3][1] == "text 3"
    with pytest.raises(ValueError, match="image-blind"):
        BlindImages(Items(), "hide")


def test_corrupted_captions_are_false_of_their_scene():
    rng = random.Random(0)
    for i in range(50):
        sc, other = W.make_scene(i, 1), W.make_scene(i + 1, 1)
        for kind in ("absent", "swap"):
            cap, _ = W.corrupt_caption(sc, other, rng, kind)
            assert not W.caption_holds(sc, cap)


@pytest.mark.parametrize("fraction,expected", [(0.0, 1.0), (0.5, 0.5 + 0.5 / 7), (1.0, 1 / 7)])
def test_easy_negative_share_mixes_uniform_draws_into_the_mined_ones(fraction, expected):
    """`shapesworld.uniform_negatives`: that share of the negatives is uniform over the batch, the rest mined."""
    b = 8
    sim = torch.full((b, b), -50.0)
    sim[torch.arange(b), (torch.arange(b) + 1) % b] = 50.0  # mining always picks the next pair
    gen = torch.Generator().manual_seed(0)
    sampler = SceneGraphNegatives(torch.eye(b, dtype=torch.bool), uniform=fraction)
    hits = sum((sampler(sim, sim, None, gen).image == (torch.arange(b) + 1) % b).float().mean().item()
               for _ in range(300))
    assert hits / 300 == pytest.approx(expected, abs=0.04)


class OracleITM(torch.nn.Module):
    """Knows which image each caption describes: image states and text states carry the image's number.
    `fooled`: calls a hard negative (the most ITC-similar other caption) a match too."""

    def __init__(self, n_img: int, fooled: bool):
        super().__init__()
        self.n_img, self.fooled = n_img, fooled

    def encode_image(self, images):
        ids = images[:, 0, 0, 0]
        return ids.view(-1, 1, 1), torch.nn.functional.one_hot(ids.long(), self.n_img).float()

    def encode_text(self, ids, mask):
        img = (ids[:, 1] - 1000).float()  # the tokenizer below writes 1000 + image number
        feat = torch.nn.functional.one_hot(img.long(), self.n_img).float()
        feat = feat + 0.5 * torch.nn.functional.one_hot((img.long() + 1) % self.n_img, self.n_img)  # next = hardest
        return img.view(-1, 1, 1), torch.nn.functional.normalize(feat, dim=-1)

    def itm_logits(self, text_states, text_atts, image_states):
        text, image = text_states[:, 0, 0], image_states[:, 0, 0]
        match = (text == image) | (self.fooled & ((text + 1) % self.n_img == image))
        return torch.stack([torch.zeros_like(text), torch.where(match, 1.0, -1.0)], dim=1)


def test_held_out_itm_accuracy_counts_positives_and_each_kind_of_negative():
    from albef_lab.eval.retrieval import zero_shot_eval

    class Split(torch.utils.data.Dataset):
        text = [f"caption of {i} {k}" for i in range(6) for k in range(2)]
        img2txt = {i: [2 * i, 2 * i + 1] for i in range(6)}
        txt2img = {t: t // 2 for t in range(12)}

        def __len__(self):
            return 6

        def __getitem__(self, i):
            return torch.full((3, 2, 2), float(i)), i

    def tokenizer(texts, max_length, padding):
        ids = torch.tensor([[101, 1000 + int(t.split()[2])] for t in texts])
        return ids, torch.ones_like(ids)

    sharp = zero_shot_eval(OracleITM(6, fooled=False), Split(), tokenizer, torch.device("cpu"), batch_size=4)
    fooled = zero_shot_eval(OracleITM(6, fooled=True), Split(), tokenizer, torch.device("cpu"), batch_size=4)
    assert sharp["itm_acc"] == sharp["itm_acc_hard"] == 100.0
    assert fooled["itm_acc"] == 100.0 and fooled["itm_acc_hard"] == 50.0  # every hard negative called a match
    # ranked without a threshold: the sharp ITM prefers the own caption always, the fooled one scores both alike
    assert sharp["itm_pair_hard"] == 100.0 and fooled["itm_pair_hard"] == 0.0
    assert sharp["itc_pair_hard"] == fooled["itc_pair_hard"] == 100.0  # ITC here ranks the own caption first
    assert sharp["img_r1"] == 100.0


def test_truth_rerank_is_a_ceiling_of_itc_and_moves_true_pairs_first():
    """`truth_rerank_scores`: inside each query's top k, true pairs come first (ITC's order within each group);
    since an image's own captions are true, R@1 can only rise over ITC's, in both directions."""
    from albef_lab.eval.retrieval import recall_metrics

    truth_rerank_scores = DIAGNOSIS.truth_rerank_scores

    g = torch.Generator().manual_seed(0)
    n_img, per = 20, 2
    txt2img = torch.arange(n_img).repeat_interleave(per)
    sims = torch.nn.functional.normalize(torch.randn(n_img, 8, generator=g), dim=1) @ \
        torch.nn.functional.normalize(torch.randn(n_img * per, 8, generator=g), dim=1).t()
    truth = torch.rand(n_img, n_img * per, generator=g) < 0.2
    truth[txt2img, torch.arange(n_img * per)] = True
    itc = recall_metrics(sims, txt2img)
    i2t, t2i = truth_rerank_scores(sims, truth, k=5)
    ceiling = recall_metrics(i2t, txt2img, scores_t2i=t2i)
    assert ceiling["img_r1"] >= itc["img_r1"] and ceiling["txt_r1"] >= itc["txt_r1"]
    assert ceiling["img_r1"] > itc["img_r1"] and ceiling["txt_r1"] > itc["txt_r1"]  # and here it does rise
    assert (i2t == -100).sum(1).tolist() == [n_img * per - 5] * n_img  # outside the top 5: -100
    row = i2t[0]  # image 0: its top-5 texts, the true ones above the false ones
    inside = row > -100
    true_in, false_in = row[inside & truth[0]], row[inside & ~truth[0]]
    if len(true_in) and len(false_in):
        assert true_in.min() > false_in.max()


def test_truth_only_r1_counts_shared_captions_on_a_hand_made_world():
    """`truth_only_r1`: text->image picks any image the text is true of; image->text the true captions that are
    true of the fewest images (ties share the hit)."""
    truth_only_r1 = DIAGNOSIS.truth_only_r1

    # texts 0..4 written for images 0, 1, 2, 1, 2; true of {0}, {0, 1, 2}, {2}, {1, 2}, {1, 2}
    txt2img = torch.tensor([0, 1, 2, 1, 2])
    truth = torch.zeros(3, 5, dtype=torch.bool)
    for t, images in enumerate([[0], [0, 1, 2], [2], [1, 2], [1, 2]]):
        truth[images, t] = True
    # text->image: (1 + 1/3 + 1 + 1/2 + 1/2) / 5; image->text: image 0 text 0 (own), image 1 texts 3 and 4
    # (two images each; text 3 is its own: half a hit), image 2 text 2 (own)
    assert truth_only_r1(truth, txt2img) == [round(100 * (10 / 3) / 5, 2), round(100 * 2.5 / 3, 2)]
    truth[1, 3] = False  # a text false of its own image is no ground truth
    with pytest.raises(ValueError, match="own image"):
        truth_only_r1(truth, txt2img)


def test_itm_diagnosis_script_runs_on_a_small_checkpoint(tmp_path):
    from pathlib import Path

    from albef_lab.cli import main as cli
    from tests.helpers import SMALL, load_module, make_world

    world = make_world(tmp_path / "w", images=40, seed=1)
    assert cli(["pretrain", *SMALL, f"data.root={world}", f"train.output_dir={tmp_path / 'run'}",
                "train.max_steps=3"]) == 0
    mod = load_module(Path(__file__).resolve().parent.parent / "scripts" / "itm_diagnosis.py")
    r = mod.main([str(tmp_path / "run" / "model.pth"), "--data", str(world), "--k", "3"])
    assert set(r["said_match_by_kind"]) <= {"count", "single", "relation", "listing"}
    assert sum(r["hard_negative_kinds"].values()) == 4  # one hard negative per held-out image (10 % of 40)
    for d in (0, 1):
        assert r["r1"]["truth_rerank_k3"][d] >= r["r1"]["itc"][d]
        assert 0 < r["r1"]["truth_only"][d] <= 100
        for way in ("itc", "itm_rerank_k3"):  # the own pair is true: its top-1 counts in both
            assert r["r1_true"][way][d] >= r["r1"][way][d], r
    # top1_true on a hand-made case: image 0 holds texts 0 and 2, image 1 text 1; scores [images, texts]
    truth = torch.tensor([[True, False, True], [False, True, False]])
    i2t = torch.tensor([[0.1, 0.9, 0.5], [0.2, 0.8, 0.0]])  # image 0's top text is false, image 1's true
    t2i = torch.tensor([[0.9, 0.1], [0.9, 0.1], [0.1, 0.9]])  # texts 0: true, 1: false, 2: false
    assert mod.top1_true(i2t, t2i, truth) == [round(100 / 3, 1), 50.0]
    assert 0 <= r["itc_pair_hard"] <= 100 and 0 <= r["itm_pair_hard"] <= 100
    assert r["edit_probe"]["all"]["n"] >= 4  # every held-out image has at least one one-word edit
    for probe in (r["object_probe"], r["object_probe_untrained"], r["object_probe_pixels"]):
        assert set(probe) == {f"{a}{m}" for a in ("shape", "colour", "size") for m in ("", "_majority")}
    t = mod.main([str(tmp_path / "run" / "model.pth"), "--data", str(world), "--k", "3", "--split", "train"])
    assert t["split"] == "train" and sum(t["hard_negative_kinds"].values()) == 4  # as many training images


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_edit_probe_scores_each_own_caption_against_edits_false_of_its_image(tmp_path, sign):
    """An oracle ITM (the scene graph's truth) gets every fixed edit right, and its inverse every one wrong: the
    edits are false of their image, paired with the right image, and counted per kind and over all."""
    from types import SimpleNamespace

    from albef_lab.data.tokenizer import load_tokenizer
    from albef_lab.eval.retrieval import EncodedSplit

    edit_probe = DIAGNOSIS.edit_probe
    from albef_lab.shapesworld import load_config
    from albef_lab.shapesworld.negatives import train_scenes
    from albef_lab.train.tasks import Task
    from tests.helpers import make_world

    world = make_world(tmp_path / "w", images=40, seed=2)
    tok = load_tokenizer(world / "vocab")
    val = Task(load_config(None, [f"data.root={world}"], "tiny"), tok).retrieval_val()
    scenes = train_scenes(world / "scenes.json", [e["image"] for e in val.entries])

    class Oracle(torch.nn.Module):
        seen: list[tuple[int, str]] = []  # every (image, text) pair the probe scored

        def encode_text(self, ids, mask):  # the ids themselves, so that the ITM head can read the text back
            return ids[..., None].float(), torch.zeros(len(ids), 4)

        def itm_logits(self, text_states, text_atts, image_states):
            out = []
            for ids, im in zip(text_states[..., 0].long(), image_states[:, 0, 0].long(), strict=True):
                text = tok.decode(ids).replace("[SEP]", "").replace("[PAD]", "").strip()
                self.seen.append((int(im), text))
                out.append([0.0, sign] if W.caption_holds(scenes[int(im)], text) else [0.0, -sign])
            return torch.tensor(out)

    model = Oracle()
    n = len(val)
    ids, mask = tok(val.text, max_length=30, padding="max_length")
    states, feat = model.encode_text(ids, mask)
    enc = EncodedSplit(torch.arange(n).float().view(n, 1, 1), torch.zeros(n, 4), states, mask, feat)
    r = edit_probe(model, tok, SimpleNamespace(img2txt=val.img2txt, text=val.text), enc, scenes, torch.device("cpu"))
    kinds = set(r) - {"all"}
    assert kinds and kinds <= {*W.EDIT_KINDS, "binding"} and len(kinds) >= 3
    assert sum(r[k]["n"] for k in kinds) == r["all"]["n"] >= n
    for v in r.values():
        assert v["itm_acc"] == v["itm_pair"] == (100.0 if sign > 0 else 0.0)
        assert v["itc_pair"] == 0.0  # equal ITC scores: a tie prefers nothing
    for im, text in model.seen:  # each edit was scored with the image whose caption it edits
        own = val.text[val.img2txt[im][0]]
        assert text == own or any(text in v for v in W.caption_edits(own, [scenes[im]]).values())
    assert len(model.seen) == n + r["all"]["n"]  # every own caption once, every edit once


def test_relation_probe_trains_itm_on_true_pairs_and_leaves_a_frozen_encoder_alone(tmp_path):
    """The focused ITM fine-tune of scripts/relation_probe.py: its own captions are true and its negatives false
    of their image (edits of the asked kinds, or other images' captions), the frozen image encoder does not move
    while the fused half does, `--train-vision` moves it, and the held-out curve reads every asked kind."""
    import random
    from pathlib import Path

    from albef_lab.cli import main as cli
    from albef_lab.data.tokenizer import load_tokenizer
    from albef_lab.models.factory import load_model
    from albef_lab.shapesworld import world as W
    from tests.helpers import SMALL, load_module, make_world

    world = make_world(tmp_path / "w", images=40, seed=1)
    assert cli(["pretrain", *SMALL, f"data.root={world}", f"train.output_dir={tmp_path / 'run'}",
                "train.max_steps=2"]) == 0
    mod = load_module(Path(__file__).resolve().parent.parent / "scripts" / "relation_probe.py")
    model, mcfg, _ = load_model(tmp_path / "run" / "model.pth", "pretrain")
    tok = load_tokenizer(world / "vocab")
    kinds = ["binding", "colour"]
    train = mod.load_split(world, "coco_train.json", kinds, 2, mcfg.vision.image_res, 0)
    test = mod.load_split(world, "coco_test.json", kinds, 1, mcfg.vision.image_res, 1)
    assert len(train.pairs) > 20 and train.images.shape[0] == len(train.scenes)
    for i, text, edits in train.pairs:
        assert W.caption_holds(train.scenes[i], text) and set(edits) <= set(kinds)
        assert not any(W.caption_holds(train.scenes[i], e) for v in edits.values() for e in v)
    rng = random.Random(0)
    for share in (0.0, 1.0):
        for pair in train.pairs[:10]:
            neg = mod.negative(pair, train, rng, share)
            assert not W.caption_holds(train.scenes[pair[0]], neg)
            if share == 0.0:  # an edit of the pair's own caption
                assert neg in {e for v in pair[2].values() for e in v}
            else:  # another image's caption
                assert neg in {p[1] for p in train.pairs}
    assert not any(mod.negative(p, train, rng, 0.0) == p[1] for p in train.pairs)

    def weights(prefix):
        return torch.cat([q.detach().flatten().clone() for n, q in model.named_parameters() if n.startswith(prefix)])

    vit, text = weights("visual_encoder."), weights("text_encoder.")
    curve = mod.fine_tune(model, tok, train, test, steps=4, batch=4, lr=1e-2, train_vision=False, random_share=0.5,
                          eval_every=2, seed=0)
    assert [c["step"] for c in curve] == [0, 2, 4] and "loss" in curve[-1]
    assert set(curve[0]) - {"step"} <= set(kinds) and len(set(curve[0]) - {"step"}) >= 1
    assert torch.equal(weights("visual_encoder."), vit)  # frozen
    assert not torch.equal(weights("text_encoder."), text)  # the text and fused half learned
    # `--mined-share`: each image's 3 most ITC-similar false captions of the split, and negatives drawn from them
    mined = mod.mine(model, tok, train, 3)
    assert len(mined.mined) == len(train.scenes) and any(mined.mined)
    for i, negs in enumerate(mined.mined):
        assert len(negs) <= 3 and not any(W.caption_holds(train.scenes[i], c) for c in negs)
    for pair in train.pairs[:10]:
        if mined.mined[pair[0]]:
            assert mod.negative(pair, mined, rng, 0.0, mined_share=1.0) in mined.mined[pair[0]]
    # `--fusion-only`: the fusion layers and the ITM head learn, the text-mode layer (what ITC reads) does not
    text_mode, fused = weights("text_encoder.bert.encoder.layer.0."), weights("text_encoder.bert.encoder.layer.1.")
    mod.fine_tune(model, tok, train, test, steps=2, batch=4, lr=1e-2, train_vision=False, random_share=0.5,
                  eval_every=2, seed=0, fusion_only=True)
    assert torch.equal(weights("text_encoder.bert.encoder.layer.0."), text_mode)
    assert not torch.equal(weights("text_encoder.bert.encoder.layer.1."), fused)
    mod.fine_tune(model, tok, train, test, steps=2, batch=4, lr=1e-2, train_vision=True, random_share=0.0,
                  eval_every=2, seed=0)
    assert not torch.equal(weights("visual_encoder."), vit)


@pytest.mark.parametrize("task", ["retrieval", "grounding"])
def test_the_recipes_fine_tuning_keeps_its_share_of_uniform_itm_negatives(tmp_path, task):
    """The tiny recipe fine-tunes retrieval and grounding with half of ITM's negatives uniform, as it pre-trains
    (its measured fine-tuning numbers were made so); the paper's config mines them all."""
    from albef_lab.config import Config
    from albef_lab.data.tokenizer import load_tokenizer
    from albef_lab.shapesworld import load_config
    from albef_lab.train.tasks import task_class
    from tests.helpers import make_world

    world = make_world(tmp_path / "w", images=20, seed=2)
    tok = load_tokenizer(world / "vocab")
    cfg = load_config(None, [f"data.root={world}"], "tiny")
    recipe = cfg.plugins(task).task(cfg, tok)
    assert isinstance(recipe, task_class(task))
    seen = []

    def net(images, ids, mask, alpha, image_ids=None, generator=None, negatives=None):
        seen.append(negatives)
        return {"loss": torch.tensor(0.0)}

    batch = (torch.zeros(2, 3, 64, 64), ["a red circle", "a blue square"], torch.tensor([0, 1]))
    recipe.forward(net, batch, 0.0, None, torch.device("cpu"))
    assert seen[0].uniform == 0.5 and seen[0].matches is None
    cfg.model.hard_negatives = False
    recipe.forward(net, batch, 0.0, None, torch.device("cpu"))
    assert seen[1].uniform == 1.0
    paper = Config()
    paper.data.root = str(world)
    task_class(task)(paper, tok).forward(net, batch, 0.0, None, torch.device("cpu"))
    assert seen[2] is None  # the model's own: the paper's mined negatives
