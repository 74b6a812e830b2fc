"""The Gradio app as a script uses it: every api_name through gradio_client, good and bad input."""

import numpy as np
import pytest
from PIL import Image

from tests.helpers import serve_demo

gradio_client = pytest.importorskip("gradio_client")


@pytest.fixture(scope="module")
def served(tmp_path_factory, demo_files):
    root = tmp_path_factory.mktemp("app")
    wb, app, url = serve_demo(root, demo_files)
    yield wb, gradio_client.Client(url, verbose=False), root
    app.close()


def image(wb, i=0):
    return gradio_client.handle_file(str(wb.gallery.paths[i]))


def test_the_endpoints_are_the_documented_ones(served):
    _, client, _ = served
    names = set(client.view_api(return_format="dict")["named_endpoints"])
    assert {"/search", "/describe", "/answer", "/gradcam", "/ground", "/classify"} <= names


def test_search_returns_gallery_images_with_scores(served):
    wb, client, _ = served
    items, notes = client.predict("a red circle", api_name="/search")
    assert len(items) == len(wb.gallery.paths[:8]) and all("ITC" in it["caption"] and "ITM" in it["caption"]
                                                           for it in items)
    assert Image.open(items[0]["image"]).size == (32, 32)


def test_describe_lists_captions(served):
    wb, client, _ = served
    text = client.predict(image(wb), api_name="/describe")
    assert text.startswith("1. ") and len(text.splitlines()) == 5


def test_answer_gives_five_answers_from_the_list(served):
    wb, client, _ = served
    label, notes = client.predict(image(wb), "how many shapes are there", api_name="/answer")
    assert len(label["confidences"]) == 5 and label["label"] in wb.answer_list


def test_classify_ranks_the_labels_as_the_workbench_does(served):
    from albef_lab.inference import read_image

    wb, client, _ = served
    label, notes = client.predict(image(wb), "circle, square, triangle", "a {}", True, api_name="/classify")
    rows, _ = wb.classify(read_image(wb.gallery.paths[0]), "circle, square, triangle", "a {}")
    assert label["label"] == rows[0]["label"]
    assert [c["label"] for c in label["confidences"]] == [r["label"] for r in rows]
    assert [c["confidence"] for c in label["confidences"]] == pytest.approx([r["itm"] for r in rows], abs=1e-6)
    by_itc, _ = client.predict(image(wb), "circle, square, triangle", "a {}", False, api_name="/classify")
    assert sum(c["confidence"] for c in by_itc["confidences"]) == pytest.approx(1.0, abs=1e-4)  # ITC's softmax


def test_gradcam_returns_maps_per_word_and_per_method(served):
    wb, client, _ = served
    summary, sentence, words, methods, notes = client.predict(image(wb), "a red circle", api_name="/gradcam")
    assert "ITM match probability" in summary and Image.open(sentence).size == (384, 384)  # shown enlarged
    assert [w["caption"] for w in words] == ["a", "red", "circle"]
    assert {m["caption"] for m in methods} == {"GradCAM", "GradCAM++", "EigenCAM", "ScoreCAM"}


def test_ground_draws_the_chosen_box(served):
    wb, client, _ = served
    boxed, heat, info = client.predict(image(wb), "the red circle", api_name="/ground")
    assert "ShapesWorld proposals" in info and Image.open(boxed).size == (384, 384)


@pytest.mark.parametrize("question", ["", "   \t "])
def test_an_empty_question_is_refused_and_the_next_request_works(served, question):
    wb, client, _ = served
    with pytest.raises(Exception, match="empty"):
        client.predict(image(wb), question, api_name="/answer")
    label, _ = client.predict(image(wb), "is there a red circle", api_name="/answer")
    assert label["label"] in wb.answer_list


def test_a_corrupt_upload_is_named_and_the_server_goes_on(served):
    wb, client, root = served
    bad = root / "holiday.png"
    bad.write_bytes(b"\x89PNG\r\n\x1a\n but then nothing useful")
    with pytest.raises(Exception, match="holiday.png is not an image"):
        client.predict(gradio_client.handle_file(str(bad)), "a red circle", api_name="/gradcam")
    summary, *_ = client.predict(image(wb), "a red circle", "itc", None, False, api_name="/gradcam")
    assert "ITC" in summary


BAD = "holiday.png"


@pytest.mark.parametrize("endpoint,args,message", [
    ("/search", ("", 8, True), "empty"), ("/search", ("a red circle", -3, True), "less than minimum"),
    ("/search", ("a red circle", 2.5, True), "whole number"),
    ("/describe", (None, 5), "no image"), ("/describe", (BAD, 5), "holiday.png is not an image"),
    ("/answer", (None, "what color is it", 5), "no image"), ("/answer", ("IMAGE", " ", 5), "empty"),
    ("/answer", (BAD, "what color is it", 5), "holiday.png is not an image"),
    ("/gradcam", (None, "a red circle", "itm", None, False), "no image"),
    ("/gradcam", ("IMAGE", "", "itm", None, False), "empty"),
    ("/gradcam", (BAD, "a red circle", "itm", None, False), "holiday.png is not an image"),
    ("/gradcam", ("IMAGE", "a red circle", "itm", 0, False), "not in the list of choices"),
    ("/gradcam", ("IMAGE", "a red circle", "grey", None, False), "not in the list of choices"),
    ("/ground", (None, "the red shape", "itm", None), "no image"), ("/ground", ("IMAGE", "  ", "itm", None), "empty"),
    ("/ground", (BAD, "the red shape", "itm", None), "holiday.png is not an image"),
    ("/ground", ("IMAGE", "the red shape", "itm", 0), "not in the list of choices"),
    ("/classify", (None, "circle, square", "a {}", True), "no image"),
    ("/classify", ("IMAGE", "circle", "a {}", True), "at least two"),
    ("/classify", ("IMAGE", "circle, square", "a photo", True), "once"),
    ("/classify", (BAD, "circle, square", "a {}", True), "holiday.png is not an image"),
])
def test_bad_input_on_every_endpoint_gets_its_message_and_the_server_goes_on(served, endpoint, args, message):
    wb, client, root = served
    (root / BAD).write_bytes(b"\x89PNG\r\n\x1a\n but then nothing useful")
    files = {BAD: gradio_client.handle_file(str(root / BAD)), "IMAGE": image(wb)}
    with pytest.raises(Exception, match=message):
        client.predict(*[files.get(a, a) if isinstance(a, str) else a for a in args], api_name=endpoint)
    items, _ = client.predict("a red circle", api_name="/search")
    assert items


def test_grounding_a_wide_photo_returns_a_box_inside_it(served):
    """No ShapesWorld proposals for an image of the user's own: sliding windows over its width and height."""
    wb, client, root = served
    path = root / "wide.png"
    Image.open(wb.gallery.paths[0]).resize((150, 60)).save(path)
    r = wb.ground(Image.open(path).convert("RGB"), "the red shape", image_path=str(path))
    assert r["proposal_source"] == "sliding windows" and r["box"] is not None
    x, y, w, h = r["box"]
    assert 0 <= x and 0 <= y and x + w <= 150 + 1e-6 and y + h <= 60 + 1e-6
    assert r["box"] in [p[:4] for p in r["proposals"]]
    assert all(0 <= x and 0 <= y and x + w <= 150 + 1e-6 and y + h <= 60 + 1e-6 for x, y, w, h, _ in r["proposals"])
    assert max(x + w for x, _, w, _, _ in r["proposals"]) == pytest.approx(150)  # the windows span its width
    assert max(y + h for _, y, _, h, _ in r["proposals"]) == pytest.approx(60)  # and its height
    boxed, _, info = client.predict(gradio_client.handle_file(str(path)), "the red shape", api_name="/ground")
    assert "sliding windows" in info and "none" not in info
    assert Image.open(boxed).size == (384, round(60 * 384 / 150))


def test_a_missing_image_is_asked_for(served):
    _, client, _ = served
    with pytest.raises(Exception, match="no image"):
        client.predict(None, "what color is the circle", api_name="/answer")


@pytest.mark.parametrize("mode", ["RGBA", "L", "I;16", "CMYK"])
def test_unusual_image_modes_are_answered(served, mode):
    wb, client, root = served
    base = Image.open(wb.gallery.paths[1])
    if mode == "I;16":
        img = Image.fromarray(np.asarray(base.convert("L"), dtype=np.uint16) * 257)
    else:
        img = base.convert(mode)
    path = root / f"mode_{mode.replace(';', '')}.{'jpg' if mode == 'CMYK' else 'png'}"
    img.save(path)
    label, _ = client.predict(gradio_client.handle_file(str(path)), "how many shapes are there", api_name="/answer")
    assert label["label"] in wb.answer_list


def test_long_text_and_unknown_words_are_reported(served):
    wb, client, _ = served
    _, notes = client.predict(image(wb), "is there a " + "very " * 40 + "red zorblax", api_name="/answer")
    assert "only the first 30" in notes and "zorblax" in notes


def test_a_40_megapixel_photo_is_answered(served):
    wb, client, root = served
    path = root / "big.jpg"
    Image.new("RGB", (7300, 5480), (200, 30, 30)).save(path, quality=40)
    label, _ = client.predict(gradio_client.handle_file(str(path)), "what color is the shape", api_name="/answer")
    assert label["label"] in wb.answer_list
