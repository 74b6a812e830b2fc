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
