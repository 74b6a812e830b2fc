"""Loaders read every export; bad input gives the promised behaviour; transforms; tokenizers."""

import json
import random
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageOps
from torch.utils.data import DataLoader

from albef_lab.data import formats as F
from albef_lab.data.datasets import (
    GroundingDataset,
    NLVRDataset,
    PretrainDataset,
    RetrievalEvalDataset,
    RetrievalTrainDataset,
    VEDataset,
    VQADataset,
    answer_weights,
    vqa_collate,
)
from albef_lab.data.randaugment import PRETRAIN_OPS, RandomAugment, autocontrast
from albef_lab.data.tokenizer import Tokenizer, load_tokenizer, write_vocab
from albef_lab.data.transforms import (
    ImageTextTransform,
    eval_transform,
    pretrain_transform,
    swap_left_right,
)
from albef_lab.shapesworld.export import WorldSettings, write_world
from albef_lab.shapesworld.world import vocabulary


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("w")
    write_world(WorldSettings(out=str(out), images=40, seed=1, noise=0.2, workers=1), progress=False)
    return out


def test_every_export_is_read_back(world):
    tf = pretrain_transform(32)
    ev = eval_transform(32)
    pre = PretrainDataset(world / "pretrain.json", world, tf)
    img, cap, idx = pre[0]
    assert img.shape == (3, 32, 32) and isinstance(cap, str) and idx == 0
    assert len(set(pre.image_index)) == 32  # 80 % of 40 images are train
    rt = RetrievalTrainDataset(world / "coco_train.json", world, tf)
    assert len(rt) == len(pre)
    ret = RetrievalEvalDataset(world / "coco_test.json", world, ev)
    assert len(ret.text) == 5 * len(ret) and ret.txt2img[7] == 1 and ret.img2txt[1] == [5, 6, 7, 8, 9]
    assert ret[2][0].shape == (3, 32, 32)
    vqa = VQADataset(world / "vqa_train.json", world, tf)
    batch = vqa_collate([vqa[i] for i in range(3)])
    images, questions, answers, weights, k = batch
    assert images.shape == (3, 3, 32, 32) and len(answers) == sum(k) == len(weights)
    assert torch.allclose(torch.tensor([sum(weights[sum(k[:i]):sum(k[:i + 1])]) for i in range(3)]).float(),
                          torch.ones(3))
    vt = VQADataset(world / "vqa_test.json", world, ev, train=False)
    assert isinstance(vt[0][2], int)
    nl = NLVRDataset(world / "nlvr_train.json", world, tf)
    a, b, s, label = nl[0]
    assert a.shape == b.shape == (3, 32, 32) and label in (0, 1)
    ve = VEDataset(world / "ve_test.json", world, ev)
    assert {ve[i][2] for i in range(3)} == {0, 1, 2}
    gr = GroundingDataset(world / "grounding_test.json", world, ev)
    assert gr[0][2] >= 0
    refer = F.read_refer(world / "refcoco+")
    ref = refer["refs"][gr.entries[0]["ref_id"]]
    assert refer["anns"][ref["ann_id"]]["image_id"] == ref["image_id"] and refer["dets"][ref["image_id"]]
    loader = DataLoader(pre, batch_size=8, num_workers=0)
    imgs, caps, ids = next(iter(loader))
    assert imgs.shape == (8, 3, 32, 32) and len(caps) == 8


def test_corrupt_image_is_skipped_counted_and_reported(world, tmp_path):
    import shutil
    root = tmp_path / "copy"
    shutil.copytree(world, root)
    bad = root / "images" / "000001.png"
    bad.write_bytes(b"\x89PNG garbage")
    ds = PretrainDataset(root / "pretrain.json", root, eval_transform(32))
    first = [i for i, e in enumerate(ds.entries) if e["image"] == "images/000001.png"][0]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        items = [ds[i] for i in range(len(ds))]
    assert len(items) == len(ds)
    assert list(ds.skipped) == [str(bad)]
    assert any(str(bad) in str(w.message) for w in caught)
    assert ds.image_index[first] != items[first][2] or ds.entries[first]["image"] != "images/000001.png"


def test_missing_files_and_roots_name_the_path(world, tmp_path):
    entries = json.loads((world / "pretrain.json").read_text())
    entries[3]["image"] = "images/nope.png"
    f = tmp_path / "p.json"
    f.write_text(json.dumps(entries))
    with pytest.raises(FileNotFoundError, match="nope.png"):
        PretrainDataset(f, world, eval_transform(32))
    with pytest.raises(FileNotFoundError, match="no_such_root"):
        PretrainDataset(world / "pretrain.json", tmp_path / "no_such_root", eval_transform(32))
    with pytest.raises(FileNotFoundError, match="absent.json"):
        PretrainDataset(tmp_path / "absent.json", world, eval_transform(32))


def test_malformed_entries_name_file_and_index(world, tmp_path):
    entries = json.loads((world / "pretrain.json").read_text())
    del entries[5]["caption"]
    f = tmp_path / "bad.json"
    f.write_text(json.dumps(entries))
    with pytest.raises(ValueError, match=r"bad.json\[5\]: missing key 'caption'"):
        PretrainDataset(f, world, eval_transform(32))
    f.write_text("[{\"image\": 1,}]")
    with pytest.raises(ValueError, match="invalid JSON at line 1"):
        PretrainDataset(f, world, eval_transform(32))
    ve = json.loads((world / "ve_train.json").read_text())
    ve[2]["label"] = "maybe"
    f.write_text(json.dumps(ve))
    with pytest.raises(ValueError, match=r"\[2\]: label 'maybe'"):
        VEDataset(f, world, eval_transform(32))


def test_caption_cleanup_like_the_original():
    assert F.pre_caption("A Man, riding  a horse-drawn cart!  ", 30) == "a man riding a horse drawn cart"
    assert F.pre_caption("one two three four", 2) == "one two"
    assert F.pre_question("What's on the left/right?") == "whats on the left right"


def test_answer_weights_are_annotator_shares():
    answers, weights = answer_weights(["red"] * 7 + ["blue"] * 3)
    assert dict(zip(answers, weights, strict=True)) == {"red": 0.7, "blue": pytest.approx(0.3)}
    assert answer_weights("tree", "vg") == (["tree"], [0.5])


def test_flip_swaps_left_and_right_in_the_text():
    assert swap_left_right("a dog left of a cat, Right?") == "a dog right of a cat, Left?"
    img = Image.new("RGB", (16, 16))
    img.paste((255, 0, 0), (0, 0, 8, 16))
    t = ImageTextTransform(16, train=True, scale=(1.0, 1.0), randaugment=False, flip_text="swap")
    plain = eval_transform(16)(img)[0]
    mirrored = eval_transform(16)(ImageOps.mirror(img))[0]
    seen = set()
    for seed in range(20):
        random.seed(seed)
        x, (text,) = t(img, ["the red half is on the left"])
        flipped = torch.allclose(x, mirrored, atol=1e-5)
        assert flipped or torch.allclose(x, plain, atol=1e-5)
        assert text == ("the red half is on the right" if flipped else "the red half is on the left")
        seen.add(flipped)
    assert seen == {True, False}
    skip = ImageTextTransform(16, train=True, scale=(1.0, 1.0), randaugment=False, flip_text="skip")
    for seed in range(10):
        random.seed(seed)
        x, (text,) = skip(img, ["the red half is on the left"])
        assert torch.allclose(x, plain, atol=1e-5) and text.endswith("left")


def test_random_augment_uses_the_originals_ops_and_keeps_size_and_type():
    aug = RandomAugment(2, 7)
    assert aug.ops == list(PRETRAIN_OPS) == ["Identity", "AutoContrast", "Equalize", "Brightness", "Sharpness",
                                             "ShearX", "ShearY", "TranslateX", "TranslateY", "Rotate"]
    img = Image.new("RGB", (20, 14), (100, 50, 25))
    rng = np.random.RandomState(0)
    fired = set()
    for _ in range(40):
        out = aug(img, rng)
        assert out.shape == (14, 20, 3) and out.dtype == np.uint8
        fired.update(name for name, _ in aug.applied)
    assert len(fired) >= 8  # the draws reach (almost) every op
    with pytest.raises(ValueError, match="unknown RandomAugment"):
        RandomAugment(ops=["Solarize"])


def test_autocontrast_whitens_like_the_original_unless_fixed():
    """The original negates a uint8 minimum: every channel whose minimum is above 0 comes out all 255.
    `fix_autocontrast` gives PIL's autocontrast instead."""
    rng = np.random.default_rng(0)
    arr = rng.integers(30, 200, (12, 16, 3), dtype=np.uint8)
    arr[..., 2] = rng.integers(0, 200, (12, 16), dtype=np.uint8)
    arr[0, 0, 2] = 0  # this channel reaches 0: no wrap there
    out = autocontrast(arr)
    assert (out[..., :2] == 255).all() and out[..., 2].min() == 0 and out[..., 2].max() == 255
    fixed = autocontrast(arr, fix=True)
    assert np.array_equal(fixed, np.asarray(ImageOps.autocontrast(Image.fromarray(arr))))
    t = ImageTextTransform(16, train=True, scale=(1.0, 1.0), flip=False, fix_autocontrast=True)
    assert t.randaug.fix_autocontrast and not ImageTextTransform(16, train=True).randaug.fix_autocontrast


def test_the_original_flip_leaves_the_caption_as_it_is():
    """The paper's configs flip the image only (the original); swapping left and right is a switch."""
    from albef_lab.config import preset
    from albef_lab.shapesworld import load_config

    assert preset("base").data.flip_text == "ignore" and load_config(None, [], "tiny").data.flip_text == "swap"
    img = Image.new("RGB", (16, 16))
    img.paste((255, 0, 0), (0, 0, 8, 16))
    t = ImageTextTransform(16, train=True, scale=(1.0, 1.0), randaugment=False)
    mirrored = eval_transform(16)(ImageOps.mirror(img))[0]
    flips = 0
    for seed in range(12):
        random.seed(seed)
        x, (text,) = t(img, ["the red half is on the left"])
        flips += torch.allclose(x, mirrored, atol=1e-5)
        assert text == "the red half is on the left"
    assert 0 < flips < 12


def test_seeded_items_augment_the_same_in_any_process_order():
    """RandomAugment draws from numpy: a seeded item gets the same draws whatever was drawn before it, and the
    caller's numpy stream is left as it was."""
    from albef_lab.train.data import SeededDataset

    class Augmented(torch.utils.data.Dataset):
        def __len__(self):
            return 8

        def __getitem__(self, i):
            arr = np.random.default_rng(i).integers(0, 255, (10, 10, 3), dtype=np.uint8)
            return torch.from_numpy(RandomAugment(2, 7)(arr).copy())

    ds = SeededDataset(Augmented(), seed=3)
    first = [ds[i] for i in range(8)]
    np.random.seed(123)
    before = np.random.get_state()[1].copy()
    again = [ds[i] for i in reversed(range(8))][::-1]
    assert all(torch.equal(a, b) for a, b in zip(first, again, strict=True))
    assert np.array_equal(np.random.get_state()[1], before)
    assert not all(torch.equal(first[0], x) for x in first[1:])


def test_reference_tokenizer_gives_the_reference_ids(reference):
    tok = Tokenizer(reference / "fixtures" / "tokenizer_tiny")
    fx = torch.load(reference / "fixtures" / "pretrain_A.pt", weights_only=True)
    ids, mask = tok(fx["inputs"]["captions"], max_length=25)
    assert torch.equal(ids, fx["inputs"]["input_ids"]) and torch.equal(mask, fx["inputs"]["attention_mask"])
    vqa = torch.load(reference / "fixtures" / "vqa.pt", weights_only=True)["train"]["inputs"]
    ids, _ = tok(vqa["answers"])
    assert torch.equal(ids, vqa["answer_input_ids"])  # "[SEP]" text stays the special token


def test_world_vocabulary_covers_every_text(world):
    tok = load_tokenizer(world / "vocab")
    assert tok.cls_token_id == 101 and tok.mask_token_id == 103 and tok.pad_token_id == 0
    assert tok.vocab_size <= 512
    texts = [e["caption"] for e in json.loads((world / "pretrain.json").read_text())]
    texts += [e["question"] for e in json.loads((world / "vqa_train.json").read_text())]
    texts += [e["sentence"] for e in json.loads((world / "ve_train.json").read_text())]
    texts += [e["sentence"] for e in json.loads((world / "nlvr_train.json").read_text())]
    texts += json.loads((world / "answer_list.json").read_text())
    ids, _ = tok(texts)
    assert not (ids == 100).any()
    assert set(vocabulary()) <= set(tok.hf.get_vocab())


def test_tokenizer_by_name_comes_only_from_the_local_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "hub"))
    with pytest.raises(FileNotFoundError, match="never downloads"):
        load_tokenizer("bert-base-uncased")
    snap = tmp_path / "hub" / "models--bert-base-uncased" / "snapshots" / "abc123"
    write_vocab(snap, ["hello", "world"])
    tok = load_tokenizer("bert-base-uncased")
    ids, _ = tok(["hello world"])
    assert ids.tolist() == [[101, tok.hf.convert_tokens_to_ids("hello"), tok.hf.convert_tokens_to_ids("world")]]
