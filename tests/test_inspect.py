"""What the notebooks draw: one step's hard negatives, MLM masks, ITM scores; grounding per expression, the layer
sweep and pytorch-grad-cam maps through the proposal scoring."""

from pathlib import Path

import pytest
import torch

from albef_lab.data.tokenizer import load_tokenizer
from albef_lab.eval.grounding import (
    camlib_heat,
    evaluate_grounding,
    gradcam_heat,
    grounding_records,
    layer_sweep,
    split_accuracy,
)
from albef_lab.eval.inspect import batch_negatives, itm_scores, mlm_example
from albef_lab.models.albef import ALBEF
from albef_lab.models.factory import create_model
from albef_lab.shapesworld import load_config
from albef_lab.shapesworld.export import WorldSettings, write_world
from tests.helpers import SMALL, batch, small_config


def test_batch_negatives_follow_the_similarity_and_never_pick_the_pair_itself():
    torch.manual_seed(0)
    model = ALBEF(small_config())
    image, ids, mask = batch(b=4)
    step = batch_negatives(model, image, ids, mask, torch.Generator().manual_seed(0))
    assert step["sim"].shape == (4, 4)
    assert (step["neg_image"] != torch.arange(4)).all() and (step["neg_text"] != torch.arange(4)).all()
    # a pair far more similar than the others is (nearly) always the one drawn
    with torch.no_grad():
        model.temp.fill_(0.001)
    drawn = [batch_negatives(model, image, ids, mask, torch.Generator().manual_seed(s))["neg_image"]
             for s in range(5)]
    sim = step["sim"].t().clone()
    sim.fill_diagonal_(-float("inf"))
    assert all(torch.equal(d, sim.argmax(1)) for d in drawn)


def test_mlm_example_masks_words_only():
    model = ALBEF(small_config(mlm_probability=0.5))
    _, ids, _ = batch(b=4)
    masked, labels = mlm_example(ids, model, torch.Generator().manual_seed(0))
    chosen = labels != -100
    assert chosen.any()
    assert not chosen[:, 0].any() and not chosen[ids == 0].any()  # never [CLS] or padding
    assert torch.equal(labels[chosen], ids[chosen])
    assert torch.equal(masked[~chosen], ids[~chosen])


def test_itm_scores_are_probabilities_of_the_right_pairs():
    torch.manual_seed(0)
    model = ALBEF(small_config())
    image, ids, mask = batch(b=4)
    scores = itm_scores(model, image, ids, mask, torch.Generator().manual_seed(0))
    assert set(scores) == {"positive", "hard_negative", "random_negative"}
    with torch.no_grad():
        s, _ = model.encode_image(image)
        t, _ = model.encode_text(ids, mask)
        own = model.itm_logits(t, mask, s).softmax(-1)[:, 1]
    assert torch.allclose(scores["positive"], own, atol=1e-6)
    assert all(((v >= 0) & (v <= 1)).all() for v in scores.values())


@pytest.fixture(scope="module")
def grounded(tmp_path_factory):
    root = tmp_path_factory.mktemp("g")
    world = root / "w"
    write_world(WorldSettings(out=str(world), images=30, seed=4, res=32, workers=1), progress=False)
    cfg = load_config(None, [*SMALL, f"data.root={world}"], "tiny")
    torch.manual_seed(0)
    model = create_model("grounding", cfg.model)
    args = (model, load_tokenizer(world / "vocab"), world / "grounding_test.json", world, world / "refcoco+", 32,
            torch.device("cpu"))
    return model, args


def test_grounding_records_agree_with_the_accuracy(grounded):
    model, args = grounded
    records = grounding_records(*args, heat=gradcam_heat(model, "itc", -1))
    assert records and {"ref_id", "split", "file_name", "text", "box", "chosen", "hit"} <= set(records[0])
    assert all(Path(args[3], r["file_name"]).is_file() for r in records)
    acc = evaluate_grounding(*args, block=-1, mode="itc")
    assert acc == split_accuracy([r["hit"] for r in records], [r["split"] for r in records])
    assert len(grounding_records(*args, limit=3)) == 3


def test_layer_sweep_covers_every_cross_attention_layer_and_vit_block(grounded, tmp_path):
    """Each row, made in one pass over every layer, is that layer's own accuracy: a direct evaluation there, on a
    model whose layers ground differently (tests/test_learning.py: the same on a trained model)."""
    from albef_lab.viz.gradcam import itc_gradcam, itc_gradcam_blocks, itm_gradcam, itm_gradcam_layers

    _, args = grounded
    cfg = load_config(None, [*SMALL, "model.vision.depth=3", "model.text.num_hidden_layers=4"], "tiny")
    torch.manual_seed(1)
    model = create_model("grounding", cfg.model).eval()
    deeper = (model, *args[1:])
    rows = layer_sweep(*deeper)
    assert [(r["mode"], r["layer"]) for r in rows] == [("itm", 1), ("itm", 2), ("itm", 3), ("itc", 0), ("itc", 1),
                                                       ("itc", 2)]
    for r in rows:
        assert {k: v for k, v in r.items() if k.startswith("acc_")} == evaluate_grounding(*deeper, block=r["layer"],
                                                                                          mode=r["mode"])
    assert len({r["acc_all"] for r in rows}) > 1, rows
    image = torch.rand(2, 3, 32, 32)
    ids, mask = args[1](["a red circle", "two shapes"])
    for layer, maps in itm_gradcam_layers(model, image, ids, mask, [1, 2, 3]).items():  # one pass = one at a time
        assert torch.allclose(maps, itm_gradcam(model, image, ids, mask, layer), atol=1e-6)
    for block, maps in itc_gradcam_blocks(model, image, ids, mask, [0, 1, 2]).items():
        assert torch.allclose(maps, itc_gradcam(model, image, ids, mask, block), atol=1e-6)


@pytest.mark.parametrize("method", ["GradCAM", "EigenCAM"])
def test_pytorch_grad_cam_maps_go_through_the_same_proposal_scoring(grounded, method):
    model, args = grounded
    images = torch.rand(2, 3, 32, 32)
    ids, mask = args[1](["a red circle", "two shapes"])
    maps = camlib_heat(model, method)(images, ids, mask)
    assert maps.shape == (2, 2, 2) and torch.isfinite(maps).all()
    acc = evaluate_grounding(*args, heat=camlib_heat(model, method), limit=4)
    assert 0 <= acc["acc_all"] <= 100


def test_draw_boxes_on_an_enlarged_copy():
    from PIL import Image

    from albef_lab.viz.overlay import draw_boxes

    image = Image.new("RGB", (16, 16), "black")
    out = draw_boxes(image, [([4, 4, 8, 8], "red")], width=1, scale=4)
    assert out.size == (64, 64) and image.getpixel((4, 4)) == (0, 0, 0)  # the original is untouched
    assert out.getpixel((16, 16)) == (255, 0, 0) and out.getpixel((48, 48)) == (255, 0, 0)  # corners, scaled
    assert out.getpixel((32, 32)) == (0, 0, 0)  # the inside stays visible


def test_linear_probe_reads_a_label_the_features_hold_and_not_one_they_lack():
    """Features that hold the label (a noisy one-hot, scaled and shifted per column) are read almost perfectly on
    rows it was not fit on; features unrelated to the label stay near chance (7 classes: 14 %)."""
    from albef_lab.shapesworld.probes import linear_probe

    g = torch.Generator().manual_seed(0)
    labels = torch.randint(0, 7, (700,), generator=g)
    train = torch.arange(700) % 2 == 0
    noise = torch.randn(700, 32, generator=g, dtype=torch.float64)
    holds = noise.clone()
    holds[:, :7] = 5.0 * torch.nn.functional.one_hot(labels, 7) + 0.3 * noise[:, :7] + 10.0
    assert linear_probe(holds, labels, train) > 95.0
    assert linear_probe(noise, labels, train) < 25.0
    shuffled = labels[torch.randperm(700, generator=g)]  # the probe scores rows it was not fit on
    assert linear_probe(holds, shuffled, train) < 25.0


def test_patches_under_a_box_are_the_tokens_it_overlaps():
    from albef_lab.shapesworld.probes import patches_under

    assert patches_under((0.0, 0.0, 0.1, 0.1), 8) == [1]  # the first patch, after [CLS]
    assert patches_under((0.9, 0.0, 1.0, 0.1), 8) == [8]  # end of the first row: (x, y), row-major
    assert patches_under((0.15, 0.15, 0.4, 0.3), 8) == [10, 11, 12, 18, 19, 20]  # two rows of three
    assert patches_under((0.9, 0.9, 1.0, 1.0), 8) == [64]  # the edge belongs to the last patch


def test_object_tokens_are_the_tokens_under_each_box_with_their_owner():
    from albef_lab.shapesworld.probes import object_features, object_tokens
    from albef_lab.shapesworld.world import Obj, Scene

    states = torch.randn(2, 1 + 16, 5)  # two images, a 4 x 4 grid
    a = Obj("circle", "red", "small", (0.0, 0.0, 0.2, 0.2))  # patch 1
    b = Obj("square", "blue", "large", (0.5, 0.5, 0.9, 0.6))  # patches 11, 12
    c = Obj("star", "green", "small", (0.0, 0.75, 0.2, 0.8))  # patch 13
    tokens, owner = object_tokens(states, [Scene(0, 0, [a, b]), Scene(1, 0, [c])])
    assert owner.tolist() == [0, 1, 1, 2]
    expected = torch.stack([states[0, 1], states[0, 11], states[0, 12], states[1, 13]])
    assert torch.equal(tokens, expected)
    # the mean of an object's tokens is its object feature
    means = torch.stack([tokens[owner == k].mean(0) for k in range(3)])
    assert torch.allclose(means, object_features(states, [Scene(0, 0, [a, b]), Scene(1, 0, [c])]))
