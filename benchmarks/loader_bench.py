"""Data-loader throughput on ShapesWorld: images/s at 64 and 256 px (pre-training transform).

    python benchmarks/loader_bench.py [--images 600] [--workers 0 2]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from torch.utils.data import DataLoader

from albef_lab.data.datasets import PretrainDataset
from albef_lab.data.transforms import eval_transform, pretrain_transform
from albef_lab.shapesworld.export import WorldSettings, write_world


def measure(root: Path, res: int, workers: int, train: bool, batches: int) -> float:
    tf = pretrain_transform(res) if train else eval_transform(res)
    ds = PretrainDataset(root / "pretrain.json", root, tf)
    loader = DataLoader(ds, batch_size=64, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=False)
    it = iter(loader)
    next(it)  # start-up (worker spawn) is not throughput
    n, t0 = 0, time.perf_counter()
    for _ in range(batches):
        try:
            images, _, _ = next(it)
        except StopIteration:
            break
        n += images.shape[0]
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=600)
    ap.add_argument("--workers", type=int, nargs="+", default=[0, 2])
    ap.add_argument("--batches", type=int, default=20)
    args = ap.parse_args()
    print(f"{'res':>5} {'workers':>7} {'transform':>10} {'images/s':>10}")
    with tempfile.TemporaryDirectory() as tmp:
        for res in (64, 256):
            root = Path(tmp) / f"w{res}"
            t0 = time.perf_counter()
            write_world(WorldSettings(out=str(root), images=args.images, res=res), progress=False)
            print(f"# world of {args.images} images at {res}px written in {time.perf_counter() - t0:.1f}s")
            for workers in args.workers:
                for train in (True, False):
                    ips = measure(root, res, workers, train, args.batches)
                    print(f"{res:>5} {workers:>7} {'pretrain' if train else 'eval':>10} {ips:>10.0f}")


if __name__ == "__main__":
    main()
