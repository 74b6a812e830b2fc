"""Several people at once against `albef-lab demo`: clients calling every endpoint side by side.

Each round starts a fresh `albef-lab demo` process on a loopback port, asks every request once alone, then lets
`--clients` clients each send every request `--repeats` times in a shuffled order, and counts errors, answers that
differ from the same request made alone, and whether the server process is still alive. Loopback only; a fixed
number of requests, each with a time limit.

    python benchmarks/app_load.py --rounds 20            # the demo's own models (runs/demo, data/shapesworld)
    python benchmarks/app_load.py --runs R --data D      # models built elsewhere
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image


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


def endpoint_requests(image_a: str, image_b: str) -> list[tuple[str, tuple]]:
    """(endpoint, arguments) of every endpoint of the workbench, on two images."""
    from gradio_client import handle_file

    a, b = handle_file(image_a), handle_file(image_b)
    return [("/search", ("a red circle", 4, True)), ("/describe", (a,)),
            ("/answer", (b, "how many shapes are there")),
            ("/gradcam", (a, "a red circle", "itm", None, True)), ("/gradcam", (b, "two shapes", "itc", None, False)),
            ("/ground", (b, "the red shape", "itm", None)), ("/ground", (a, "the large shape", "itc", None)),
            ("/classify", (a, "circle, square, triangle, star", "a {}", True))]


def hammer(url: str, todo: list[tuple[str, tuple]], clients: int, repeats: int, downloads: Path,
           timeout: float = 600) -> tuple[int, list[str], list[str]]:
    """Every request alone, then `clients` clients side by side; (requests sent, errors, mismatches)."""
    from gradio_client import Client

    alone_client = Client(url, verbose=False, download_files=str(downloads / "alone"))
    alone = [digest(alone_client.predict(*args, api_name=name)) for name, args in todo]
    errors, mismatches, lock = [], [], threading.Lock()

    def one_client(c: int) -> None:
        # each client downloads into its own folder, as separate people's machines do
        client = Client(url, verbose=False, download_files=str(downloads / f"client{c}"))
        for r in range(repeats):
            for i in np.random.default_rng(c * 1000 + r).permutation(len(todo)).tolist():
                name, args = todo[i]
                try:
                    got = digest(client.predict(*args, api_name=name))
                except Exception as e:  # noqa: BLE001 - every failure is counted and shown
                    with lock:
                        errors.append(f"client {c} {name}: {type(e).__name__}: {str(e)[:200]}")
                    continue
                if got != alone[i]:
                    with lock:
                        mismatches.append(f"client {c} {name} {args[1:]}")

    with ThreadPoolExecutor(clients) as pool:
        for f in [pool.submit(one_client, c) for c in range(clients)]:
            f.result(timeout=timeout)
    return clients * repeats * len(todo), errors, mismatches


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_demo(runs: str, data: str, port: int, log: Path) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "albef_lab", "demo", "--runs", runs, "--data", data, "--port", str(port)]
    proc = subprocess.Popen(cmd, stdout=log.open("w"), stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 600
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"albef-lab demo exited with {proc.returncode}:\n{log.read_text()[-2000:]}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=1):
                return proc
        except OSError:
            time.sleep(0.5)
    proc.kill()
    raise RuntimeError("albef-lab demo did not come up in 10 minutes")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", default="runs/demo")
    ap.add_argument("--data", default="data/shapesworld")
    ap.add_argument("--rounds", type=int, default=3, help="fresh servers, one after the other")
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    test = json.loads((Path(args.data) / "coco_test.json").read_text())
    images = [str(Path(args.data) / e["image"]) for e in test[:2]]
    failed = 0
    for r in range(args.rounds):
        with tempfile.TemporaryDirectory() as tmp:
            port = free_port()
            log = Path(tmp) / "demo.log"
            t0 = time.perf_counter()
            proc = start_demo(args.runs, args.data, port, log)
            try:
                sent, errors, mismatches = hammer(f"http://127.0.0.1:{port}/", endpoint_requests(*images),
                                                  args.clients, args.repeats, Path(tmp))
            except Exception as e:  # noqa: BLE001 - a dead server fails the whole round
                sent, errors, mismatches = 0, [f"{type(e).__name__}: {e}"], []
            alive = proc.poll() is None
            proc.terminate()
            proc.wait(30)
            ok = alive and not errors and not mismatches
            failed += not ok
            print(f"round {r + 1}: {sent} requests, {len(errors)} errors, {len(mismatches)} differ from alone, "
                  f"server {'alive' if alive else f'died ({proc.returncode})'}, {time.perf_counter() - t0:.0f} s")
            for line in (errors + mismatches)[:5]:
                print(f"  {line}")
            if not alive:
                print(log.read_text()[-1500:])
    print(f"load: {args.rounds - failed} of {args.rounds} rounds clean")
    return 1 if failed else 0


if __name__ == "__main__":
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    sys.exit(main())
