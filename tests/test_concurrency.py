"""Several people at once: clients calling every endpoint side by side get the answers each gets alone.

Loopback only, a fixed number of requests, each with a time limit (`benchmarks/app_load.py` runs the same load
against a fresh `albef-lab demo` process, round after round). Grad-CAM once kept its attention map on the shared
model, so concurrent requests cleared each other's; this catches any state shared across requests.
"""

from pathlib import Path

import pytest

from tests.helpers import load_module, serve_demo

pytest.importorskip("gradio_client")
LOAD = load_module(Path(__file__).resolve().parents[1] / "benchmarks" / "app_load.py")


@pytest.fixture(scope="module")
def served(tmp_path_factory, demo_files):
    root = tmp_path_factory.mktemp("concurrent")
    wb, app, url = serve_demo(root, demo_files)
    yield wb, url
    app.close()


def test_every_endpoint_answers_many_clients_as_it_answers_one(served, tmp_path):
    wb, url = served
    todo = LOAD.endpoint_requests(*(str(p) for p in wb.gallery.paths[:2]))
    assert {name for name, _ in todo} == {"/search", "/describe", "/answer", "/gradcam", "/ground", "/classify"}
    sent, errors, mismatches = LOAD.hammer(url, todo, clients=8, repeats=3, downloads=tmp_path)
    assert sent == 8 * 3 * len(todo)
    assert not errors, f"{len(errors)} of {sent} requests failed: {errors[:5]}"
    assert not mismatches, f"{len(mismatches)} answers differ from the same request made alone: {mismatches[:5]}"
