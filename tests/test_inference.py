"""The inference API the app and the notebooks share: inputs checked and converted, every tab's computation."""

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from albef_lab.demo import build_workbench
from albef_lab.inference import InputError, folder_images, read_image, sliding_windows
from albef_lab.viz.gradcam import itm_gradcam


@pytest.fixture(scope="module")
def wb(tmp_path_factory, demo_files):
    root = tmp_path_factory.mktemp("inf")
    world, pre, vqa = demo_files
    return build_workbench([str(pre), str(vqa)], runs=str(root / "runs"), data=str(world), progress=False)


@pytest.mark.parametrize("mode", ["RGBA", "LA", "L", "I;16", "CMYK", "P", "1", "F"])
def test_every_image_mode_becomes_rgb(tmp_path, mode):
    rng = np.random.default_rng(0)
    if mode == "I;16":
        img = Image.fromarray(rng.integers(0, 65535, (20, 30), dtype=np.uint16))
    elif mode == "F":
        img = Image.fromarray(rng.random((20, 30)).astype(np.float32))
    else:
        img = Image.fromarray(rng.integers(0, 255, (20, 30, 3), dtype=np.uint8)).convert(mode)
    path = tmp_path / ("x.tif" if mode in ("I;16", "F", "CMYK") else "x.png")
    img.save(path)
    out = read_image(path)
    assert out.mode == "RGB" and out.size == (30, 20)
    if mode == "I;16":  # scaled into 8 bits, not clipped to white
        assert 0 < np.asarray(out).mean() < 255


def test_transparent_pixels_become_white(tmp_path):
    img = Image.new("RGBA", (4, 4), (255, 0, 0, 0))
    assert np.asarray(read_image(img))[0, 0].tolist() == [255, 255, 255]


def test_bad_files_are_named(tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 truncated jpeg")
    with pytest.raises(InputError, match="broken.jpg is not an image"):
        read_image(bad)
    with pytest.raises(InputError, match="not found"):
        read_image(tmp_path / "missing.png")


def test_a_40_megapixel_photo_is_shrunk_not_refused(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (7300, 5480), (10, 200, 30)).save(path, quality=50)
    out = read_image(path)
    assert max(out.size) <= 2048 and out.getpixel((5, 5))[1] > 150


def test_text_notes_truncation_and_unknown_words(wb):
    t = wb.text("a red circle and a blorptastic square")
    assert any("blorptastic" in n and "[UNK]" in n for n in t.notes) and "[UNK]" in t.tokens
    long = wb.text(" ".join(["red"] * 60))
    assert long.ids.shape[1] == wb.max_tokens and any("only the first" in n for n in long.notes)
    for empty in ("", "   \n\t"):
        with pytest.raises(InputError, match="empty"):
            wb.text(empty, "question")


@pytest.mark.parametrize("call", ["search", "describe", "answer"])
@pytest.mark.parametrize("k", [-3, 0, 2.5, "8", True])
def test_a_count_that_is_not_a_whole_number_of_at_least_one_is_refused(wb, call, k):
    img = read_image(wb.gallery.paths[0])
    args = {"search": ("a red circle",), "describe": (img,), "answer": (img, "what color is it")}[call]
    with pytest.raises(InputError, match="whole number of at least 1"):
        getattr(wb, call)(*args, k=k)


@pytest.mark.parametrize("mode,layer,message", [("itm", 0, "has no cross-attention"), ("itm", 99, "no cross"),
                                                ("itc", 7, "blocks: choose"), ("grey", None, "must be 'itm' or 'itc'")])
def test_a_grad_cam_mode_or_layer_that_does_not_exist_is_refused(wb, mode, layer, message):
    img = read_image(wb.gallery.paths[0])
    for call in (wb.explain, wb.ground):
        with pytest.raises(InputError, match=message):
            call(img, "a red circle", mode=mode, layer=layer)


def test_search_ranks_the_gallery_and_reranks_by_itm(wb):
    rows, notes = wb.search("a red circle", k=3)
    assert len(rows) == 3 and not notes
    assert [r["itm"] for r in rows] == sorted((r["itm"] for r in rows), reverse=True)
    plain, _ = wb.search("a red circle", k=3, rerank=False)
    assert [r["itc"] for r in plain] == sorted((r["itc"] for r in plain), reverse=True)
    assert {r["path"] for r in plain} == {r["path"] for r in rows}  # re-ranking reorders the same top k


def test_gallery_index_is_cached_and_skips_broken_files(wb, tmp_path, monkeypatch):
    folder = tmp_path / "mine"
    folder.mkdir()
    for i, p in enumerate(wb.gallery.paths[:3]):
        (folder / f"{i}.png").write_bytes(p.read_bytes())
    (folder / "broken.png").write_bytes(b"nope")
    world_gallery = wb.gallery
    try:
        g = wb.index_gallery(folder_images(folder), cache_dir=tmp_path / "cache", progress=False)
        assert len(g.paths) == 3 and "broken.png" in g.skipped
        monkeypatch.setattr(wb.model, "encode_image", lambda *a, **k: pytest.fail("recomputed despite the cache"))
        again = wb.index_gallery(folder_images(folder), cache_dir=tmp_path / "cache", progress=False)
        assert torch.equal(again.feats, g.feats)
        (folder / "3.png").write_bytes(world_gallery.paths[3].read_bytes())  # the folder changed: a new index
        monkeypatch.undo()
        assert len(wb.index_gallery(folder_images(folder), cache_dir=tmp_path / "cache", progress=False).paths) == 4
    finally:
        wb.gallery = world_gallery


def test_describe_returns_the_captions_of_highest_itc_similarity(wb):
    """The k captions a brute-force ITC ranking of the whole caption set puts first, best first."""
    img = read_image(wb.gallery.paths[2])
    rows = wb.describe(img, k=4)
    model = wb.model
    with torch.no_grad():
        _, feat = model.encode_image(wb.pixels(img))
        ids, mask = wb.tok(wb.captions, max_length=wb.max_tokens)
        _, text_feat = model.encode_text(ids, mask)
    sims = (text_feat @ feat[0]).tolist()
    best = sorted(range(len(sims)), key=lambda i: -sims[i])[:4]
    assert [r["caption"] for r in rows] == [wb.captions[i] for i in best]
    assert [r["itc"] for r in rows] == pytest.approx([sims[i] for i in best], abs=1e-5)
    assert rows[0]["itc"] >= max(sims) - 1e-5 > min(sims) + 1e-3


def test_classify_ranks_each_label_by_its_own_itm_and_itc_scores(wb):
    """Each label's ITC similarity and ITM match probability are those of its own caption scored alone; the
    softmax is over the labels at the model's temperature; the order follows ITM (or ITC without re-ranking)."""
    from albef_lab.inference import match_probability

    img = read_image(wb.gallery.paths[1])
    labels = ["circle", "square", "triangle", "star", "circle "]
    rows, notes = wb.classify(img, labels, "a {}")
    assert [r["label"] for r in rows] != [] and sorted(r["label"] for r in rows) == ["circle", "square", "star",
                                                                                    "triangle"]
    model = wb.model
    with torch.no_grad():
        image_states, feat = model.encode_image(wb.pixels(img))
        for r in rows:
            t = wb.text(r["text"])
            states, text_feat = model.encode_text(t.ids, t.mask)
            assert r["text"] == f"a {r['label']}"
            assert r["itc"] == pytest.approx(float(text_feat[0] @ feat[0]), abs=1e-5)
            alone = float(match_probability(model.itm_logits(states, t.mask, image_states))[0])
            assert r["itm"] == pytest.approx(alone, abs=1e-5)
    assert [r["itm"] for r in rows] == sorted((r["itm"] for r in rows), reverse=True)
    assert sum(r["itc_prob"] for r in rows) == pytest.approx(1.0)
    temp = float(model.temp)
    top = max(rows, key=lambda r: r["itc"])
    assert top["itc_prob"] == pytest.approx(1 / sum(np.exp((r["itc"] - top["itc"]) / temp) for r in rows), rel=1e-4)
    by_itc, _ = wb.classify(img, "circle, square, triangle, star", "a {}", rerank=False)
    assert [r["label"] for r in by_itc] == [r["label"] for r in sorted(rows, key=lambda r: -r["itc"])]
    assert "itm" not in by_itc[0]


@pytest.mark.parametrize("labels,template,message", [
    ("circle", "a {}", "at least two"), ("circle, , circle", "a {}", "at least two"), ("", "a {}", "at least two"),
    (", ".join(f"l{i}" for i in range(101)), "a {}", "at most 100"), ("circle, square", "a photo", '"{}" once'),
    ("circle, square", "{} {}", '"{}" once'),
])
def test_classify_refuses_labels_or_a_template_it_cannot_use(wb, labels, template, message):
    with pytest.raises(InputError, match=message):
        wb.classify(read_image(wb.gallery.paths[0]), labels, template)


def test_answer_returns_the_top_answers_of_the_list(wb):
    rows, _ = wb.answer(read_image(wb.gallery.paths[0]), "how many shapes are there", k=5)
    assert len(rows) == 5 and all(r["answer"] in wb.answer_list for r in rows)
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)


def test_explain_gives_a_sentence_map_and_one_map_per_word(wb):
    img = read_image(wb.gallery.paths[0])
    r = wb.explain(img, "a red circle")
    assert [w for w, _ in r["words"]] == ["a", "red", "circle"]
    assert r["sentence"].shape == (2, 2) and 0 <= r["itm_prob"] <= 1 and -1 <= r["itc_sim"] <= 1
    t = wb.text("a red circle")
    same = itm_gradcam(wb.model, wb.pixels(img), t.ids, t.mask, r["layer"])[0]  # the function the evaluation uses
    assert torch.allclose(r["sentence"], same)
    itc = wb.explain(img, "a red circle", mode="itc")
    assert itc["words"] == [] and itc["sentence"].shape == (2, 2)


def test_each_word_gets_its_own_tokens_map_and_the_probability_is_the_match_column(wb, monkeypatch):
    """The map shown under a word is that token's map of `itm_gradcam` (not a neighbour's: here each token's map
    holds its position), and the ITM probability is P(match) of the model's own logits, the column `itm_loss`
    trains as the positive."""
    import albef_lab.inference as I
    from albef_lab.inference import match_probability
    from albef_lab.objectives.itm import itm_loss

    def numbered(model, image, ids, mask, layer, per_token=False):
        return torch.arange(ids.shape[1], dtype=torch.float32).view(1, -1, 1, 1).expand(1, -1, 2, 2)

    img = read_image(wb.gallery.paths[1])
    t = wb.text("a red circle and a blue square")
    with monkeypatch.context() as m:
        m.setattr(I, "itm_gradcam", numbered)
        r = wb.explain(img, "a red circle and a blue square")
    assert [w for w, _ in r["words"]] == t.tokens[1:] == "a red circle and a blue square".split()
    assert [float(m[0, 0]) for _, m in r["words"]] == [float(j) for j in range(1, len(t.tokens))]
    assert float(r["sentence"][0, 0]) == sum(range(len(t.tokens))) / len(t.tokens)  # over every position
    r = wb.explain(img, "a red circle and a blue square")
    with torch.no_grad():
        text_states, _ = wb.model.encode_text(t.ids, t.mask)
        image_states, _ = wb.model.encode_image(wb.pixels(img))
        logits = wb.model.itm_logits(text_states, t.mask, image_states)
    assert r["itm_prob"] == pytest.approx(logits.softmax(-1)[0, 1].item(), abs=1e-6)
    confident = torch.tensor([[-5.0, 5.0], [5.0, -5.0]])  # row 0 trained as the match, row 1 as a negative
    assert itm_loss(confident, 1)[0] < 0.01 and match_probability(confident).tolist() == pytest.approx([1, 0], abs=1e-4)


def test_pytorch_grad_cam_methods(wb):
    maps = wb.cam_methods(read_image(wb.gallery.paths[0]), "a red circle")
    assert set(maps) == {"GradCAM", "GradCAM++", "EigenCAM", "ScoreCAM"}
    assert all(m.shape == (2, 2) and np.isfinite(m).all() for m in maps.values())


def test_ground_uses_world_proposals_or_sliding_windows(wb):
    path = wb.gallery.paths[0]
    img = read_image(path)
    r = wb.ground(img, "the red circle", image_path=str(path))
    assert r["proposal_source"] == "ShapesWorld proposals" and r["box"] in [p[:4] for p in r["proposals"]]
    other = wb.ground(img, "the red circle", image_path="not_from_the_world.png")
    assert other["proposal_source"] == "sliding windows"


def test_sliding_windows_cover_the_image():
    boxes = sliding_windows(400, 300)
    assert all(0 <= x and 0 <= y and x + w <= 400 + 1e-6 and y + h <= 300 + 1e-6 for x, y, w, h, _ in boxes)
    covered = np.zeros((300, 400), bool)
    for x, y, w, h, _ in boxes:
        covered[int(y):int(y + h), int(x):int(x + w)] = True
    assert covered.mean() > 0.97


def test_object_query_accuracy_is_measured_against_chance(wb, tmp_path):
    from albef_lab.shapesworld.measures import object_query_accuracy

    data = wb.gallery.paths[0].parents[1]
    out = object_query_accuracy(wb, data)
    assert out["queries"] > 0 and 0 <= out["top1_acc"] <= 100 and 0 < out["chance"] < 100


@pytest.mark.parametrize("file,task", [("ALBEF.pth", "pretrain"), ("refcoco.pth", "retrieval"), ("vqa.pth", "vqa")])
def test_an_official_file_is_built_at_the_image_size_of_its_position_table(tmp_path, file, task):
    """Official files carry no config: the preset gives the architecture, the position table the image size
    (the fine-tuned files are at 384 px where the preset says 256); the load is strict, nothing resized."""
    from albef_lab.inference import load_checkpoint
    from albef_lab.models.factory import create_model
    from tests.helpers import small_config

    cfg = small_config()
    cfg.vision.image_res = 48  # 3 x 3 patches of 16 where the preset builds 2 x 2 (32 px)
    torch.manual_seed(0)
    src = create_model(task, cfg)
    torch.save({"model": src.state_dict(), "epoch": 3}, tmp_path / file)  # the published layout
    loaded = load_checkpoint(tmp_path / file, small_config())  # the architecture of a preset, at 32 px
    assert loaded.task == task and loaded.cfg.vision.image_res == 48
    assert any("48 px from its position table" in note for note in loaded.inferred)
    assert loaded.report.clean and not loaded.report.resized
    assert loaded.model.visual_encoder.pos_embed.shape[1] == 1 + 9
    for k, v in src.state_dict().items():
        assert torch.equal(loaded.model.state_dict()[k], v), k


def test_classify_at_the_command_line(wb, demo_files, capsys):
    """`albef-lab classify`: the workbench's ranking as a table; a VQA file or a missing one is one clear line."""
    from albef_lab.cli import main

    world, pre, vqa = demo_files
    image = str(wb.gallery.paths[1])
    args = ["classify", image, "--labels", "circle, square, triangle", "--template", "a {}", "--data", str(world)]
    assert main([*args, "--checkpoint", str(pre)]) == 0
    table = capsys.readouterr().out.splitlines()
    rows, _ = wb.classify(read_image(image), "circle, square, triangle", "a {}")
    assert table[0].split() == ["label", "ITC", "P(ITC)", "P(ITM)"]
    assert [line.split()[0] for line in table[1:]] == [r["label"] for r in rows]
    assert [float(line.split()[3]) for line in table[1:]] == pytest.approx([r["itm"] for r in rows], abs=1e-3)
    assert main([*args, "--checkpoint", str(vqa)]) == 2
    assert "is a VQA model" in capsys.readouterr().err
    assert main([*args, "--checkpoint", str(world / "nothing.pth")]) == 2
    assert "not found" in capsys.readouterr().err
    assert main(["classify", image, "--labels", "circle", "--checkpoint", str(pre), "--data", str(world)]) == 2
    assert "at least two" in capsys.readouterr().err


def test_about_shows_the_vqa_model_per_question_type_beside_the_text_only_guess(wb):
    """The VQA run's last evaluation (its metrics.jsonl beside the checkpoint): each type's accuracy and the
    text-only guess on the same questions, and the questions counted add up to the whole test split."""
    import json

    vqa = next(x for x in wb.about() if x["task"] == "vqa")
    rows = vqa["held_out_by_question_type"]
    assert {r["type"] for r in rows} <= {"colour", "shape", "count", "exist", "relation"} and len(rows) >= 3
    test = json.loads((Path(wb.vqa.path).parents[1] / "world" / "vqa_test.json").read_text())  # tests/helpers.py
    assert sum(r["questions"] for r in rows) == len([e for e in test if e.get("answer")])
    assert all(0 <= r["accuracy"] <= 100 and 0 <= r["text_only_guess"] <= 100 for r in rows)
    assert "vqa_acc" in vqa["held_out"] and not any(k.endswith("_colour") for k in vqa["held_out"])
    assert "held_out_by_question_type" not in next(x for x in wb.about() if x["task"] != "vqa")
