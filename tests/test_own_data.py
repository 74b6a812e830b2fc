"""Your own images and captions (`--data`): real photographs (scikit-image's samples) with captions written here,
fine-tuned and evaluated from the command line; every kind of bad input gets a message that names its place."""

import json

import numpy as np
import pytest
from PIL import Image

from albef_lab.cli import main
from albef_lab.data.pairs import held_out, load_pairs
from tests.helpers import SMALL, make_world, small_cfg

CAPTIONS = {
    "astronaut": ["an astronaut in a white suit", "a woman in front of a flag"],
    "coffee": ["a cup of coffee on a saucer", "a white cup on a table"],
    "chelsea": ["a cat with stripes", "a ginger cat looking to the side"],
    "rocket": ["a rocket on the launch pad", "a tall rocket under the sky"],
    "camera": ["a man with a camera", "a black and white photo of a photographer"],
    "cat": ["a cat with green eyes", "a sleeping cat"],
}


def photos(folder, names=CAPTIONS):
    """The sample photographs as JPEG files, and a CSV of two captions each beside them."""
    import skimage.data

    (folder / "img").mkdir(parents=True)
    rows = ["image,caption"]
    for name in names:
        pixels = getattr(skimage.data, name)()
        Image.fromarray(pixels if pixels.ndim == 3 else np.stack([pixels] * 3, -1)).save(folder / "img" / f"{name}.jpg")
        rows += [f'img/{name}.jpg,"{c}"' for c in CAPTIONS[name]]
    (folder / "captions.csv").write_text("\n".join(rows) + "\n")
    return folder


@pytest.fixture(scope="module")
def start(tmp_path_factory):
    """A small pre-training to fine-tune from (its vocabulary: ShapesWorld's, so photo words are [UNK])."""
    from albef_lab.train.engine import pretrain

    root = tmp_path_factory.mktemp("own")
    world = make_world(root / "w", images=20, seed=1)
    pretrain(small_cfg(world, root / "pre", "train.max_steps=1"))
    return world, root / "pre" / "model.pth"


def test_a_folder_of_photos_fine_tunes_retrieval_and_says_what_it_bought(tmp_path, start, capsys):
    world, pre = start
    data = photos(tmp_path / "photos")
    out = tmp_path / "run"
    args = ["finetune", "retrieval", "--data", str(data), "--init", str(pre), "--preset", "tiny", *SMALL,
            f"data.tokenizer={world / 'vocab'}", f"train.output_dir={out}", "train.max_steps=2", "data.k_test=4"]
    assert main(args) == 0
    printed = capsys.readouterr()
    assert "held out by a hash of their path" in printed.err
    lines = printed.out.splitlines()
    zero = [x for x in lines if x.startswith("zero-shot:")]
    tuned = [x for x in lines if x.startswith("fine-tuned:")]
    assert zero and tuned and "text->image R@1" in zero[0] and "image->text R@1" in tuned[0]
    assert lines.index(zero[0]) < lines.index(tuned[0])
    before = [i for i, x in enumerate(lines) if x.startswith("zero-shot, model.pth before fine-tuning: text->image")]
    result = [i for i, x in enumerate(lines) if x.startswith("retrieval: ")]
    assert before and result and before[0] < result[0]  # seen before the fine-tuning runs
    assert lines[0].startswith("data: ") and "validation captions" in lines[0]
    assert (out / "model.pth").is_file()
    train = json.loads((out / "data" / "train.json").read_text())
    val = json.loads((out / "data" / "val.json").read_text())
    assert len(train) + 2 * len(val) == 12 and val and all(len(v["caption"]) == 2 for v in val)
    assert {e["image"] for e in train}.isdisjoint(v["image"] for v in val)
    assert main(["evaluate", "retrieval", "--checkpoint", str(out / "model.pth"), "--data", str(data), "--preset",
                 "tiny", *SMALL, f"data.tokenizer={world / 'vocab'}", f"train.output_dir={tmp_path / 'ev'}"]) == 0
    assert '"img_r1"' in capsys.readouterr().out


def test_the_held_out_images_are_the_same_on_every_run_and_machine(tmp_path):
    data = photos(tmp_path / "p")
    a, b = load_pairs(data), load_pairs(data / "captions.csv")
    assert [r.image for r in a.val] == [r.image for r in b.val] and a.val
    moved = photos(tmp_path / "elsewhere")  # the same names under another folder: the same split
    assert [r.image.name for r in load_pairs(moved).val] == [r.image.name for r in a.val]
    root = data.resolve()
    share = np.mean([held_out(root / f"img/{i}.jpg", root, 0.1) for i in range(2000)])
    assert 0.08 < share < 0.12


def test_a_validation_file_replaces_the_held_out_share(tmp_path):
    data = photos(tmp_path / "train", names=["astronaut", "coffee", "chelsea"])
    val = photos(tmp_path / "val", names=["rocket", "camera"])
    pairs = load_pairs(data, val)
    assert len(pairs.train) == 6 and len(pairs.val) == 4
    assert not any("held out" in n for n in pairs.notes)


@pytest.mark.parametrize("table,message", [
    ("image,caption\nimg/astronaut.jpg,an astronaut,extra\n", "captions.csv:2: 3 fields where the header has 2"),
    ("image,text\nimg/astronaut.jpg,an astronaut\n", "captions.csv:1: the header must name the columns image and "
                                                     "caption"),
    ('image,caption\nimg/astronaut.jpg,an astronaut\nimg/coffee.jpg,"  "\n', "captions.csv:3: empty caption"),
    ("image,caption\n,an astronaut\n", "captions.csv:2: no image path"),
    ("image,caption\n", "captions.csv: no rows"),
])
def test_a_malformed_csv_row_names_its_file_and_line(tmp_path, table, message):
    data = photos(tmp_path / "p")
    (data / "captions.csv").write_text(table)
    with pytest.raises(ValueError, match=message):
        load_pairs(data)


@pytest.mark.parametrize("line,message", [
    ('{"image": "img/coffee.jpg", "caption": "a cup"', "captions.jsonl:2: invalid JSON"),
    ('{"image": "img/coffee.jpg"}', "captions.jsonl:2: expected"),
    ('{"image": "img/coffee.jpg", "caption": ["a cup"]}', "captions.jsonl:2: the caption should be a string"),
    ('["img/coffee.jpg", "a cup"]', "captions.jsonl:2: expected"),
])
def test_a_malformed_jsonl_line_names_its_file_and_line(tmp_path, line, message):
    data = photos(tmp_path / "p")
    (data / "captions.csv").unlink()
    (data / "captions.jsonl").write_text('{"image": "img/astronaut.jpg", "caption": "an astronaut"}\n' + line + "\n")
    with pytest.raises(ValueError, match=message):
        load_pairs(data)


def test_missing_images_are_counted_and_the_first_named(tmp_path):
    data = photos(tmp_path / "p")
    (data / "img" / "coffee.jpg").unlink()
    (data / "img" / "rocket.jpg").unlink()
    with pytest.raises(FileNotFoundError, match=r"2 of 6 images are missing; the first: coffee.jpg \(.*captions.csv"
                                                r":4\), coffee.jpg \(.*:5\), rocket.jpg"):
        load_pairs(data)


def test_unreadable_images_are_skipped_and_listed_once(tmp_path):
    data = photos(tmp_path / "p")
    (data / "img" / "camera.jpg").write_bytes(b"\xff\xd8\xff not a jpeg at all")
    pairs = load_pairs(data)
    note = [n for n in pairs.notes if "unreadable" in n]
    assert len(note) == 1 and note[0].startswith("1 unreadable image(s) skipped: camera.jpg")
    assert all(r.image.name != "camera.jpg" for r in pairs.train + pairs.val)
    assert len(pairs.train) + len(pairs.val) == 10


def test_duplicate_rows_are_dropped_with_a_note(tmp_path):
    data = photos(tmp_path / "p")
    with open(data / "captions.csv", "a") as f:
        f.write('img/coffee.jpg,"A cup of  coffee on a saucer"\nimg/coffee.jpg,"a cup of coffee on a saucer"\n')
    pairs = load_pairs(data)
    assert len(pairs.train) + len(pairs.val) == 12
    assert any(n.startswith("2 duplicate row(s) dropped (the first: ") and "captions.csv:14, as " in n
               and "captions.csv:4" in n for n in pairs.notes)


def test_a_folder_needs_exactly_one_table_and_a_bad_path_is_named(tmp_path, capsys):
    data = photos(tmp_path / "p")
    (data / "more.jsonl").write_text("")
    with pytest.raises(ValueError, match="expected one .csv or .jsonl file.*captions.csv, more.jsonl"):
        load_pairs(data)
    assert main(["evaluate", "ve", "--checkpoint", "x.pth", "--data", str(data)]) == 2
    assert "serves retrieval and pretrain, not ve" in capsys.readouterr().err
    assert main(["evaluate", "retrieval", "--checkpoint", "x.pth", "--data", str(tmp_path / "none")]) == 2
    assert "data not found" in capsys.readouterr().err
