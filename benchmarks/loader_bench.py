"""Pre-training loader throughput on COCO-sized photographs: ours against the original's transform, per core.

    python benchmarks/loader_bench.py [--images 150] [--res 256] [--rounds 5] [--workers 1 2]

Writes 640x480 JPEGs (quality 90) cut from scikit-image's sample photographs, then times, in one process on one
thread, reading + decoding + the pre-training transform per image: the original's pipeline as published
(`Image.open(...).convert('RGB')`, torchvision's RandomResizedCrop(0.2-1.0, bicubic), RandomHorizontalFlip,
RandomAugment(2, 7) (its ops bit for bit, `albef_lab/data/randaugment.py`), ToTensor, Normalize) and ours
(`PretrainDataset` with `pretrain_transform`), and ours reading the same images from WebDataset tar shards
(`ShardPretrainDataset`). Rounds alternate so drift hits both; medians are reported, then
the stages of each path, then DataLoader throughput with 1..N workers. Ends with `loader speedup: N.NN`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import tempfile
import time
from pathlib import Path

import cv2
import numpy as np
import torch
import torch.nn.functional as Fn
from PIL import Image
from torch.utils.data import DataLoader
from torchvision import transforms as T

from albef_lab.data.datasets import PretrainDataset, read_uint8
from albef_lab.data.randaugment import RandomAugment
from albef_lab.data.shards import ShardPretrainDataset, export_shards
from albef_lab.data.transforms import MEAN, STD, pretrain_transform


def write_photos(root: Path, n: int, seed: int = 0) -> list[str]:
    """`n` different 640x480 JPEGs: random crops of the sample photographs, resized, quality 90."""
    from skimage import data as samples

    sources = [samples.astronaut(), samples.coffee(), samples.chelsea(), samples.rocket(),
               samples.immunohistochemistry()]
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        src = Image.fromarray(sources[i % len(sources)])
        w, h = src.size
        cw, ch = int(w * rng.uniform(0.6, 1.0)), int(h * rng.uniform(0.6, 1.0))
        x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
        name = f"{i:05d}.jpg"
        src.resize((640, 480), Image.BICUBIC, box=(x, y, x + cw, y + ch)).save(root / name, quality=90)
        names.append(name)
    (root / "pretrain.json").write_text(json.dumps([{"image": f, "caption": "a photograph"} for f in names]))
    return names


def original_transform(res: int):
    """The original's `pretrain_transform` (ALBEF/dataset/__init__.py), built the way it builds it."""
    return T.Compose([
        T.RandomResizedCrop(res, scale=(0.2, 1.0), interpolation=T.InterpolationMode.BICUBIC),
        T.RandomHorizontalFlip(),
        RandomAugment(2, 7),
        T.ToTensor(),
        T.Normalize(MEAN, STD),
    ])


def per_image_original(paths: list[Path], tf) -> float:
    t0 = time.perf_counter()
    for p in paths:
        tf(Image.open(p).convert("RGB"))
    return len(paths) / (time.perf_counter() - t0)


def per_image_ours(ds: PretrainDataset) -> float:
    t0 = time.perf_counter()
    for i in range(len(ds)):
        ds[i]
    return len(ds) / (time.perf_counter() - t0)


def stages(paths: list[Path], res: int) -> dict[str, tuple[float, float]]:
    """Milliseconds per image of each stage, (original, ours), on the same crops and RandomAugment draws."""
    crop, aug = T.RandomResizedCrop(res, scale=(0.2, 1.0)), RandomAugment(2, 7)
    boxes = [crop.get_params(Image.open(p), crop.scale, crop.ratio) for p in paths]
    np.random.seed(0)
    plans = [aug.draw() for _ in paths]
    fires = [any(name != "Identity" for name, _ in plan) for plan in plans]
    clock: dict[str, list[float]] = {}

    def timed(stage: str, path: int, fn, items: list) -> list:
        t0 = time.perf_counter()
        out = [fn(*a) for a in items]
        clock.setdefault(stage, [0.0, 0.0])[path] = (time.perf_counter() - t0) / len(items) * 1e3
        return out

    def pil_resize(im, b):
        return im.resize((res, res), Image.BICUBIC, box=(b[1], b[0], b[1] + b[3], b[0] + b[2]))

    def torch_resize(x, b):
        window = x[None, :, b[0]:b[0] + b[2], b[1]:b[1] + b[3]]
        return Fn.interpolate(window, size=(res, res), mode="bicubic", antialias=True)[0]

    def torch_aug(x, plan, fire):
        if not fire:
            return x
        return torch.from_numpy(aug.apply(x.permute(1, 2, 0).contiguous().numpy(), plan)).permute(2, 0, 1)

    pil = timed("read + decode", 0, lambda p: Image.open(p).convert("RGB"), [(p,) for p in paths])
    ten = timed("read + decode", 1, read_uint8, [(p,) for p in paths])
    pil = timed("crop + resize", 0, pil_resize, list(zip(pil, boxes, strict=True)))
    ten = timed("crop + resize", 1, torch_resize, list(zip(ten, boxes, strict=True)))
    pil = timed("RandomAugment", 0, lambda im, plan: aug.apply(np.array(im), plan), list(zip(pil, plans, strict=True)))
    ten = timed("RandomAugment", 1, torch_aug, list(zip(ten, plans, fires, strict=True)))
    timed("to float + normalise", 0, lambda a: T.Normalize(MEAN, STD)(T.ToTensor()(a)), [(a,) for a in pil])
    timed("to float + normalise", 1, lambda x: T.Normalize(MEAN, STD)(x.contiguous().float().div_(255)),
          [(x,) for x in ten])
    return {stage: (a, b) for stage, (a, b) in clock.items()}


class OriginalDataset(torch.utils.data.Dataset):
    def __init__(self, paths, tf):
        self.paths, self.tf = paths, tf

    def __len__(self):
        return len(self.paths)

    def __getitem__(self, i):
        return self.tf(Image.open(self.paths[i]).convert("RGB")), "a photograph", i


def loader_rate(ds, workers: int, epochs: int) -> float:
    loader = DataLoader(ds, batch_size=32, shuffle=True, num_workers=workers, drop_last=True,
                        persistent_workers=workers > 0)
    for _ in loader:  # an epoch to start the workers and warm the page cache
        pass
    n, t0 = 0, time.perf_counter()
    for _ in range(epochs):
        for images, _, _ in loader:
            n += images.shape[0]
    return n / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--images", type=int, default=150)
    ap.add_argument("--res", type=int, default=256)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--workers", type=int, nargs="+", default=list(range(1, (os.cpu_count() or 1) + 1)))
    ap.add_argument("--epochs", type=int, default=2, help="DataLoader epochs timed per setting")
    args = ap.parse_args()
    torch.set_num_threads(1)
    cv2.setNumThreads(1)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        names = write_photos(root, args.images)
        paths = [root / n for n in names]
        print(f"# {args.images} JPEGs 640x480 q90, {sum(p.stat().st_size for p in paths) / len(paths) / 1e3:.0f} kB "
              f"each; {args.res} px; torch {torch.__version__}, one thread")
        orig_tf = original_transform(args.res)
        ours = PretrainDataset(root / "pretrain.json", root, pretrain_transform(args.res))
        pattern, _ = export_shards(root / "pretrain.json", root, root / "shards", per_shard=50, progress=False)
        shards = ShardPretrainDataset(pattern, pretrain_transform(args.res))
        per_image_original(paths[:20], orig_tf), per_image_ours(ours), per_image_ours(shards)  # warm the caches
        orig, new, sharded = [], [], []
        for _ in range(args.rounds):
            orig.append(per_image_original(paths, orig_tf))
            new.append(per_image_ours(ours))
            sharded.append(per_image_ours(shards))
        o, n, sh = statistics.median(orig), statistics.median(new), statistics.median(sharded)
        print(f"\nper core (median of {args.rounds} rounds): original {o:.0f} images/s, ours {n:.0f} images/s "
              f"(from files), {sh:.0f} images/s from tar shards (shards / files {sh / n:.2f})")
        print("\nwhere the time goes, ms per image (same crops):")
        print(f"{'stage':>22} {'original':>9} {'ours':>7}")
        total = [0.0, 0.0]
        for stage, (a, b) in stages(paths, args.res).items():
            total[0] += a
            total[1] += b
            print(f"{stage:>22} {a:>9.2f} {b:>7.2f}")
        print(f"{'sum':>22} {total[0]:>9.2f} {total[1]:>7.2f}")
        print(f"\nDataLoader, batch 32, images/s ({os.cpu_count()} cores on this machine):")
        print(f"{'workers':>7} {'original':>9} {'ours':>7} {'shards':>7}")
        for w in args.workers:
            print(f"{w:>7} {loader_rate(OriginalDataset(paths, orig_tf), w, args.epochs):>9.0f} "
                  f"{loader_rate(ours, w, args.epochs):>7.0f} {loader_rate(shards, w, args.epochs):>7.0f}")
        print(f"\ncores to feed 1,000 images/s at {args.res} px: original {1000 / o:.1f}, ours {1000 / n:.1f}")
        print(f"loader speedup: {n / o:.2f}")


if __name__ == "__main__":
    main()
