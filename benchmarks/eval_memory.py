"""Retrieval evaluation's peak memory and time: the original's loop against ours, each in a fresh process.

    python benchmarks/eval_memory.py --size small --images 64 --texts 320 --k 16     # the side-by-side shapes
    python benchmarks/eval_memory.py --size tiny --images 5000 --texts 25000 --k 256  # COCO's 5k test split

The original's `Retrieval.py: evaluation`, as published: every text's states and every image's ViT states are
kept, then for each image its top-k texts by ITC are fused with k copies of the image's states, and for each text
its top-k images, into two full score matrices. Ours: `albef_lab.eval.retrieval.rerank_scores` (each distinct
pair fused once, keys/values once per image), and ours with `StreamedImageStates` (`data.stream_images`: image
states re-encoded chunk by chunk, never all held). All get the same random weights and the same images (drawn batch
by batch from a seed, as a loader would deliver them). Prints peak RSS (the process's high-water mark, MiB), the
part above the model and inputs, time, and whether the top-k rankings are identical. Ends with `memory ratio:`
(ours over the original's peak).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from albef_lab.eval.retrieval import StreamedImageStates, rerank_scores
from albef_lab.models.factory import create_model

sys.path.insert(0, str(Path(__file__).parent))
from retrieval_bench import model_config  # noqa: E402


def rss_mib() -> float:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def peak_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def texts(cfg, n: int):
    g = torch.Generator().manual_seed(1)
    lo = 1000 if cfg.text.vocab_size > 2000 else 104
    ids = torch.randint(lo, cfg.text.vocab_size, (n, 30), generator=g)
    ids[:, 0] = cfg.cls_token_id
    mask = (torch.arange(30)[None] < torch.randint(8, 31, (n,), generator=g)[:, None]).long()
    return ids.masked_fill(mask == 0, 0), mask


class Images(torch.utils.data.Dataset):
    """Image i is noise from seed i: any batching, and a second pass, sees the same images."""

    def __init__(self, n: int, res: int):
        self.n, self.res = n, res

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.randn(3, self.res, self.res, generator=torch.Generator().manual_seed(i)), i


@torch.no_grad()
def encode(model, cfg, args, image_batch: int, stream: bool = False):
    ids, mask = texts(cfg, args.texts)
    t_states, t_feat = zip(*(model.encode_text(ids[a:a + 256], mask[a:a + 256]) for a in range(0, len(ids), 256)),
                           strict=True)
    images = Images(args.images, cfg.vision.image_res)
    batches = (x for x, _ in torch.utils.data.DataLoader(images, batch_size=image_batch))
    if stream:
        i_feat = torch.cat([model.encode_image(x)[1] for x in batches])
        return StreamedImageStates(model, images, torch.device("cpu")), i_feat, torch.cat(t_states), mask, \
            torch.cat(t_feat)
    i_states, i_feat = zip(*(model.encode_image(x) for x in batches), strict=True)
    return torch.cat(i_states), torch.cat(i_feat), torch.cat(t_states), mask, torch.cat(t_feat)


@torch.no_grad()
def original(model, image_states, image_feat, text_states, text_atts, text_feat, k: int):
    """The published loop: one query at a time, its k candidates in one batch, two full score matrices."""
    sims = image_feat @ text_feat.t()
    i2t = torch.full((len(image_feat), len(text_feat)), -100.0)
    for i, row in enumerate(sims):
        idx = row.topk(k).indices
        i2t[i, idx] = model.itm_logits(text_states[idx], text_atts[idx], image_states[i].repeat(k, 1, 1))[:, 1]
    sims = sims.t()
    t2i = torch.full((len(text_feat), len(image_feat)), -100.0)
    for t, row in enumerate(sims):
        idx = row.topk(k).indices
        t2i[t, idx] = model.itm_logits(text_states[t].repeat(k, 1, 1), text_atts[t].repeat(k, 1),
                                       image_states[idx])[:, 1]
    return i2t, t2i


def child(args) -> None:
    torch.manual_seed(0)
    cfg = model_config(args.size, None)
    model = create_model("retrieval", cfg).eval()
    model.cfg.share_cross_kv = args.method != "original"
    base = rss_mib()
    t0 = time.perf_counter()
    encoded = encode(model, cfg, args, 64 if args.method == "original" else 128, args.method == "streamed")
    encoded_at = rss_mib()
    if args.method == "original":
        i2t, t2i = original(model, *encoded, args.k)
    else:
        i2t, t2i = rerank_scores(model, *encoded, args.k)
    seconds = time.perf_counter() - t0
    top = {"i2t": i2t.topk(args.k), "t2i": t2i.topk(min(args.k, args.images))}
    torch.save({key: (t.values, t.indices) for key, t in top.items()}, args.out)
    print(json.dumps({"peak": peak_mib(), "base": base, "encoded": encoded_at, "seconds": seconds}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=("tiny", "small", "base"), default="small")
    ap.add_argument("--images", type=int, default=64)
    ap.add_argument("--texts", type=int, default=320)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--method", choices=("original", "ours", "streamed"), help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.method:
        return child(args)
    print(f"# {args.size}: {args.images} images x {args.texts} texts, k {args.k}; CPU, {torch.get_num_threads()} "
          f"threads, torch {torch.__version__}; each method in its own process")
    print(f"{'method':>9} {'peak RSS MiB':>13} {'above model MiB':>16} {'after encoding':>15} {'seconds':>8}")
    rows, tops = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        for method in ("original", "ours", "streamed"):
            out = Path(tmp) / f"{method}.pt"
            cmd = [sys.executable, __file__, "--size", args.size, "--images", str(args.images), "--texts",
                   str(args.texts), "--k", str(args.k), "--method", method, "--out", str(out)]
            done = subprocess.run(cmd, check=True, capture_output=True, text=True)
            r = json.loads(done.stdout.strip().splitlines()[-1])
            rows[method], tops[method] = r, torch.load(out)
            print(f"{method:>9} {r['peak']:>13.0f} {r['peak'] - r['base']:>16.0f} {r['encoded'] - r['base']:>15.0f} "
                  f"{r['seconds']:>8.1f}")
    for method in ("ours", "streamed"):
        same = all(torch.equal(tops["original"][key][1], tops[method][key][1]) for key in ("i2t", "t2i"))
        print(f"{method}: top-{args.k} rankings identical to the original's: {same}")
        if not same:  # float rounding can swap two candidates whose scores tie
            moved = sum(int((tops["original"][key][1] != tops[method][key][1]).any(1).sum()) for key in ("i2t", "t2i"))
            gap = max((tops["original"][key][0] - tops[method][key][0]).abs().max().item() for key in ("i2t", "t2i"))
            print(f"{method}: queries whose top-{args.k} order differs: {moved}; largest difference between the "
                  f"scores at the same rank: {gap:.1e} (a swap of ties when small)")
    print(f"speedup: {rows['original']['seconds'] / rows['ours']['seconds']:.2f}")
    print(f"memory ratio: {rows['ours']['peak'] / rows['original']['peak']:.2f}")


if __name__ == "__main__":
    main()
