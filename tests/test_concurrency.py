"""Several people at once: clients calling every endpoint side by side get the answers each gets alone.

Loopback only, a fixed number of requests, each with a time limit. Grad-CAM once kept its attention map on the
shared model, so concurrent requests cleared each other's; this catches any state shared across requests.
"""

import hashlib
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
from PIL import Image

from tests.helpers import serve_demo

gradio_client = pytest.importorskip("gradio_client")

CLIENTS = 8
REPEATS = 3


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    root = tmp_path_factory.mktemp("concurrent")
    wb, app, url = serve_demo(root)
    yield wb, url
    app.close()


def pixels(path: str) -> str:
    """A digest of an image's pixels (the file names differ per request)."""
    return hashlib.sha256(np.asarray(Image.open(path).convert("RGB")).tobytes()).hexdigest()


def digest(value):
    """A result with every image file replaced by its pixels' digest."""
    if isinstance(value, dict):
        if "image" in value and "caption" in value:  # a gallery item
            return (pixels(value["image"]), value["caption"])
        return {k: digest(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [digest(v) for v in value]
    if isinstance(value, str) and value.endswith((".png", ".webp", ".jpg", ".jpeg")):
        return pixels(value)
    return value


def requests(wb):
    """(endpoint, arguments) of every endpoint, on two gallery images."""
    a, b = (gradio_client.handle_file(str(p)) for p in wb.gallery.paths[:2])
    return [("/search", ("a red circle", 4, True)), ("/describe", (a, 3)),
            ("/answer", (b, "how many shapes are there", 3)),
            ("/gradcam", (a, "a red circle", "itm", None, True)), ("/gradcam", (b, "two shapes", "itc", None, False)),
            ("/ground", (b, "the red shape", "itm", None)), ("/ground", (a, "the large shape", "itc", None))]


def test_every_endpoint_answers_many_clients_as_it_answers_one(served, tmp_path):
    wb, url = served
    downloads = tmp_path
    todo = requests(wb)
    alone_client = gradio_client.Client(url, verbose=False, download_files=str(downloads / "alone"))
    alone = [digest(alone_client.predict(*args, api_name=name)) for name, args in todo]

    errors, mismatches, lock = [], [], threading.Lock()

    def one_client(c: int) -> None:
        # each client downloads into its own folder, as separate people's machines do
        client = gradio_client.Client(url, verbose=False, download_files=str(downloads / f"client{c}"))
        for r in range(REPEATS):
            for i in np.random.default_rng(c * 10 + r).permutation(len(todo)).tolist():
                name, args = todo[i]
                try:
                    got = digest(client.predict(*args, api_name=name))
                except Exception as e:  # noqa: BLE001 - every failure is counted and shown
                    with lock:
                        errors.append(f"client {c} {name}: {type(e).__name__}: {e}")
                    continue
                if got != alone[i]:
                    with lock:
                        mismatches.append(f"client {c} {name} {args[1:]}")

    with ThreadPoolExecutor(CLIENTS) as pool:
        for f in [pool.submit(one_client, c) for c in range(CLIENTS)]:
            f.result(timeout=600)
    assert not errors, f"{len(errors)} of {CLIENTS * REPEATS * len(todo)} requests failed: {errors[:5]}"
    assert not mismatches, f"{len(mismatches)} answers differ from the same request made alone: {mismatches[:5]}"
