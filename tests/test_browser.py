"""The app in a real browser: Debian's Chromium, driven by Playwright, as a person uses it."""

import os
import shutil

import pytest

from albef_lab.demo import app_module
from albef_lab.inference import read_image
from tests.helpers import serve_demo

pytest.importorskip("playwright")
if not shutil.which("chromium") and not os.path.exists("/usr/bin/chromium"):
    if os.environ.get("CI"):
        pytest.fail("chromium is not installed (.ci/run installs it with apt-get)", pytrace=False)
    pytest.skip("Debian's chromium is not installed (apt-get install chromium)", allow_module_level=True)


@pytest.fixture(scope="module")
def url(tmp_path_factory, demo_files):
    wb, app, address = serve_demo(tmp_path_factory.mktemp("browser"), demo_files)
    yield address, wb
    app.close()


def test_a_person_searches_asks_and_explains(url, tmp_path):
    screens = app_module("screens")
    base, wb = url
    image = str(wb.gallery.paths[0])
    with screens.browser_page(base) as page:
        try:
            assert screens.search(page, "a red circle") >= 1
            best = screens.answer(page, image, "how many shapes are there")
            assert best in wb.answer_list
            n_words, n_methods = screens.gradcam(page, image, "a red circle")
            assert n_words == 3 and n_methods == 4
            screens.ground(page, image, "the red circle")
            rows, _ = wb.classify(read_image(image), "circle, square, triangle, star", "a {}")
            assert screens.classify(page, image, "circle, square, triangle, star") == rows[0]["label"]
        except Exception:
            shot = os.environ.get("ALBEF_SCREENSHOT_DIR", str(tmp_path))
            page.screenshot(path=os.path.join(shot, "browser_failure.png"), full_page=True)
            print(f"screenshot of the failure: {shot}/browser_failure.png")
            raise


def test_the_page_is_up_while_the_models_build_and_each_tab_answers_when_ready(tmp_path, demo_files):
    """A first start: the page shows the build's progress at once, a search before the model exists says so, the
    status turns ready on its own (the page polls), then the same search and a VQA answer work."""
    import threading

    from albef_lab.demo import DemoBuild, finetune_demo_vqa, pretrain_demo_model
    from tests.helpers import free_port
    from tests.test_demo import BUILD_EXTRA, demo_copy, gated

    screens = app_module("screens")
    paths = demo_copy(tmp_path, demo_files[0])
    gates = threading.Event(), threading.Event()
    build = DemoBuild(paths, extra=BUILD_EXTRA, steps=(gated(pretrain_demo_model, gates[0]),
                                                       gated(finetune_demo_vqa, gates[1]))).start()
    app = app_module().build_app(build)
    port = free_port()
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, allowed_paths=[str(paths.data)])
    image = str(next((paths.data / "images").glob("*.png")))
    try:
        with screens.browser_page(f"http://127.0.0.1:{port}/") as page:
            try:
                status = page.locator("#build-status")
                status.get_by_text("pre-training").first.wait_for()
                assert "⏳" in status.inner_text() and "VQA fine-tuning" in status.inner_text()
                page.get_by_label("Text query").fill("a red circle")
                page.get_by_role("button", name="Search").click()
                page.get_by_text("the model is still being built").first.wait_for()
                gates[0].set()
                status.get_by_text("unlocks Retrieval").first.wait_for()
                page.wait_for_function("document.querySelector('#build-status').innerText.includes('✅')")
                assert screens.search(page, "a red circle") >= 1
                gates[1].set()
                status.get_by_text("The models are ready.").wait_for()
                assert screens.answer(page, image, "how many shapes are there") in build.wb.answer_list
            except Exception:
                page.screenshot(path=str(tmp_path / "build_failure.png"), full_page=True)
                print(f"screenshot of the failure: {tmp_path}/build_failure.png")
                raise
    finally:
        gates[0].set()
        gates[1].set()
        app.close()
