"""Drive the app in a real browser (Debian's Chromium through Playwright) the way a person uses it.

Used by tests/test_browser.py and, as a script, to take the README's screenshots of the running demo:
`python app/screens.py --url http://127.0.0.1:7860 --out docs` (start `albef-lab demo` first).
"""

from __future__ import annotations

import argparse
import sys
from contextlib import contextmanager
from pathlib import Path

CHROMIUM = "/usr/bin/chromium"
TIMEOUT_MS = 120_000


@contextmanager
def browser_page(url: str, width: int = 1280, height: int = 1000):
    """A page of headless Chromium at `url` (no browser is downloaded: Debian's package is used)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=["--headless=new", "--no-sandbox", "--disable-gpu"])
        try:
            page = browser.new_page(viewport={"width": width, "height": height})
            page.set_default_timeout(TIMEOUT_MS)
            page.goto(url)
            page.get_by_role("tab", name="Retrieval").wait_for()
            yield page
        finally:
            browser.close()


def search(page, query: str) -> int:
    """Type a query, press Search, wait for the result images; returns how many are shown."""
    page.get_by_role("tab", name="Retrieval").click()
    page.get_by_label("Text query").fill(query)
    page.get_by_role("button", name="Search").click()
    images = page.locator("#search-results img")
    images.first.wait_for()
    return images.count()


def open_with_image(page, tab: str, upload_id: str, image: str) -> None:
    """Go to a tab and upload an image into its image input; wait until the preview shows."""
    page.get_by_role("tab", name=tab).click()
    page.locator(f"#{upload_id} input[type=file]").set_input_files(image)
    page.locator(f"#{upload_id} img").first.wait_for()


def answer(page, image: str, question: str) -> str:
    """Upload an image, ask, wait for the answers; returns the best answer's text."""
    open_with_image(page, "VQA", "vqa-image", image)
    page.get_by_label("Question").fill(question)
    page.get_by_role("button", name="Answer").click()
    best = page.locator("#vqa-answers h2")
    best.first.wait_for()
    return best.first.inner_text()


def gradcam(page, image: str, text: str) -> tuple[int, int]:
    """Upload an image and a text, press Explain; returns (per-word maps shown, CAM-method maps shown)."""
    open_with_image(page, "Grad-CAM", "cam-image", image)
    page.locator("#cam-text textarea").fill(text)
    page.get_by_role("button", name="Explain").click()
    page.locator("#cam-sentence img").first.wait_for()
    page.locator("#cam-methods img").first.wait_for()
    return page.locator("#cam-words img").count(), page.locator("#cam-methods img").count()


def ground(page, image: str, expression: str) -> None:
    """Upload an image and an expression, press Ground, wait for the boxes and the heat map."""
    open_with_image(page, "Grounding", "ground-image", image)
    page.get_by_label("Referring expression").fill(expression)
    page.get_by_role("button", name="Ground").click()
    page.locator("#ground-box img").first.wait_for()
    page.locator("#ground-heat img").first.wait_for()


def classify(page, image: str, labels: str, template: str = "a {}") -> str:
    """Upload an image, type labels and a template, press Classify; returns the best label's text."""
    open_with_image(page, "Classify", "classify-image", image)
    page.locator("#classify-labels textarea").fill(labels)
    page.get_by_label("Template ({} is the label)").fill(template)
    page.get_by_role("button", name="Classify").click()
    best = page.locator("#classify-labels-out h2")
    best.first.wait_for()
    return best.first.inner_text()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--url", default="http://127.0.0.1:7860")
    p.add_argument("--out", default="docs")
    p.add_argument("--image", default=None, help="image to upload (default: the first ShapesWorld test image)")
    args = p.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    image = args.image or _first_test_image()
    with browser_page(args.url) as page:
        search(page, "a red circle")
        page.screenshot(path=str(out / "tab_retrieval.png"), full_page=True)
        answer(page, image, "how many shapes are there")
        page.screenshot(path=str(out / "tab_vqa.png"), full_page=True)
        gradcam(page, image, "there is a red circle")
        page.screenshot(path=str(out / "tab_gradcam.png"), full_page=True)
        ground(page, image, "the red shape")
        page.screenshot(path=str(out / "tab_grounding.png"), full_page=True)
        classify(page, image, "circle, square, triangle, star")
        page.screenshot(path=str(out / "tab_classify.png"), full_page=True)
    print(f"screenshots in {out}/")
    return 0


def _first_test_image() -> str:
    import json

    entry = json.loads(Path("data/shapesworld/coco_test.json").read_text())[0]
    return str(Path("data/shapesworld") / entry["image"])


if __name__ == "__main__":
    sys.exit(main())
