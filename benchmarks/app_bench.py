"""How fast the workbench answers: start-up, gallery indexing, a text query over 1,000 images, a VQA answer,
a Grad-CAM request with all its maps. Random weights at the tiny and base sizes (the demo's own models, if
`runs/demo` holds them, for the start-up time).

    python benchmarks/app_bench.py [--sizes tiny base] [--gallery 1000] [--repeats 3]
"""

from __future__ import annotations

import argparse
import socket
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from albef_lab.data.tokenizer import write_vocab
from albef_lab.inference import Gallery, Loaded, Workbench, read_image
from albef_lab.models.checkpoint import LoadReport
from albef_lab.models.factory import create_model
from albef_lab.shapesworld import load_config
from albef_lab.shapesworld.world import vocabulary


def timed(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls after one warm-up call."""
    fn()
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return float(np.median(times))


def workbench(size: str, tok_dir: Path) -> Workbench:
    from albef_lab.data.tokenizer import load_tokenizer

    cfg = load_config(None, [], size).model
    torch.manual_seed(0)
    matcher = Loaded("pretrain", create_model("pretrain", cfg).eval(), cfg, LoadReport())
    vqa = Loaded("vqa", create_model("vqa", cfg).eval(), cfg, LoadReport())
    answers = ["yes", "no", "red", "blue", "green", "one", "two", "three", "circle", "square"] * 13
    return Workbench(load_tokenizer(tok_dir), matcher, vqa, captions=["a red circle"] * 100, answer_list=answers)


def images(folder: Path, n: int, res: int) -> list[Path]:
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for i in range(n):
        p = folder / f"{i:05d}.png"
        Image.fromarray(rng.integers(0, 255, (res, res, 3), dtype=np.uint8)).save(p)
        paths.append(p)
    return paths


def bench_size(size: str, n_gallery: int, repeats: int, tmp: Path) -> dict[str, float]:
    wb = workbench(size, tmp / "vocab")
    res = wb.model.cfg.vision.image_res
    n_index = n_gallery if size == "tiny" else min(n_gallery, 64)  # base: index a sample, tile it to the size
    paths = images(tmp / f"img_{size}", n_index, res)
    t = time.perf_counter()
    wb.index_gallery(paths, progress=False)
    index_ips = n_index / (time.perf_counter() - t)
    reps = -(-n_gallery // n_index)
    wb.gallery = Gallery((paths * reps)[:n_gallery], wb.gallery.feats.repeat(reps, 1)[:n_gallery], {})
    img = read_image(paths[0])
    return {
        "gallery indexing (images/s)": index_ips,
        f"text query over {n_gallery} images, ITM re-rank of 8 (s)": timed(lambda: wb.search("a red circle", 8),
                                                                           repeats),
        "text query, ITC only (s)": timed(lambda: wb.search("a red circle", 8, rerank=False), repeats),
        "VQA answer, 128 candidates (s)": timed(lambda: wb.answer(img, "what color is the circle"), repeats),
        "Grad-CAM, ITM sentence + per-word maps (s)": timed(lambda: wb.explain(img, "a red circle to the left"),
                                                            repeats),
        "Grad-CAM + 4 pytorch-grad-cam methods (s)": timed(lambda: (wb.explain(img, "a red circle"),
                                                                    wb.cam_methods(img, "a red circle")), 1),
    }


def startup(runs: Path, data: Path) -> float | None:
    """Seconds from nothing to a launched server with the demo's saved models (None if they are not built)."""
    if not (runs / "pretrain" / "model.pth").is_file() or not (runs / "vqa" / "model.pth").is_file():
        return None
    from albef_lab.demo import app_module, build_workbench

    t = time.perf_counter()
    wb = build_workbench([], runs=str(runs), data=str(data), progress=False)
    app = app_module().build_app(wb)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    app.launch(server_name="127.0.0.1", server_port=port, prevent_thread_lock=True, quiet=True)
    elapsed = time.perf_counter() - t
    app.close()
    return elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["tiny", "base"])
    p.add_argument("--gallery", type=int, default=1000)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--runs", default="runs/demo")
    p.add_argument("--data", default="data/shapesworld")
    args = p.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    s = startup(Path(args.runs), Path(args.data))
    print(f"app start with the demo models present: {s:.1f} s" if s is not None else
          "app start: skipped (run `albef-lab demo` once to build the demo models)")
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        write_vocab(tmp / "vocab", vocabulary())
        for size in args.sizes:
            print(f"\n== {size} preset, random weights")
            for name, value in bench_size(size, args.gallery, args.repeats, tmp).items():
                print(f"  {name:<58} {value:10.3f}")


if __name__ == "__main__":
    main()
