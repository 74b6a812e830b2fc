"""Retrieval evaluation time: encoding, and the ITM re-rank with shared (per image) vs per-pair cross-attention
keys/values, in one process on the same features; the rankings must be identical.

    python benchmarks/retrieval_bench.py --size base --res 384 --images 32 --texts 160 --k 16
    python benchmarks/retrieval_bench.py --size tiny --world data/shapesworld   # a ShapesWorld test split
    python benchmarks/retrieval_bench.py --world data/shapesworld --checkpoint runs/pretrain_tiny/model.pth

The last line is `speedup: N.NN` (re-rank, shared over per-pair).
"""

from __future__ import annotations

import argparse
import time

import torch

from albef_lab.config import ModelConfig
from albef_lab.eval.retrieval import rerank_scores
from albef_lab.models.factory import create_model, load_model
from albef_lab.shapesworld import load_config

SIZES = ("tiny", "small", "base")


def model_config(size: str, res: int | None) -> ModelConfig:
    """tiny and base are the presets; small is a ViT-S/16-like model (width 384, 6 + 6 BERT layers)."""
    cfg = load_config(None, [], "base" if size == "small" else size).model
    if size == "small":
        v, t = cfg.vision, cfg.text
        v.width, v.depth, v.num_heads, v.image_res = 384, 12, 6, 128
        t.hidden_size = t.encoder_width = 384
        t.num_attention_heads, t.intermediate_size = 6, 1536
    if res:
        cfg.vision.image_res = res
    return cfg


def inputs(cfg: ModelConfig, n_img: int, n_txt: int, world: str | None):
    if world:  # the real test split of a ShapesWorld folder
        from torch.utils.data import DataLoader

        from albef_lab.data.datasets import RetrievalEvalDataset
        from albef_lab.data.tokenizer import load_tokenizer
        from albef_lab.data.transforms import eval_transform

        ds = RetrievalEvalDataset(f"{world}/coco_test.json", world, eval_transform(cfg.vision.image_res))
        images = torch.cat([b[0] for b in DataLoader(ds, batch_size=128)])
        ids, mask = load_tokenizer(f"{world}/vocab")(ds.text, max_length=30, padding="max_length")
        return images, ids, mask
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n_img, 3, cfg.vision.image_res, cfg.vision.image_res, generator=g)
    lo = 1000 if cfg.text.vocab_size > 2000 else 104
    ids = torch.randint(lo, cfg.text.vocab_size, (n_txt, 30), generator=g)
    ids[:, 0] = cfg.cls_token_id
    lengths = torch.randint(8, 31, (n_txt,), generator=g)
    mask = (torch.arange(30)[None] < lengths[:, None]).long()
    return images, ids.masked_fill(mask == 0, 0), mask


def ranks_agree_up_to(ref: torch.Tensor, new: torch.Tensor, k: int, tol: float) -> bool:
    """`new`'s top-k order is also a top-k order of `ref` when scores closer than `tol` count as ties."""
    in_new_order = ref.gather(1, new.topk(k).indices)
    ordered = bool((in_new_order[:, :-1] >= in_new_order[:, 1:] - tol).all())
    return ordered and bool((in_new_order[:, -1] >= ref.topk(k).values[:, -1] - tol).all())


@torch.no_grad()
def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", choices=SIZES, default="base")
    ap.add_argument("--res", type=int, default=None, help="image size (default: the size's own; base 256)")
    ap.add_argument("--images", type=int, default=32)
    ap.add_argument("--texts", type=int, default=160)
    ap.add_argument("--k", type=int, default=16)
    ap.add_argument("--world", default=None, help="a ShapesWorld folder: use its test split (tiny size)")
    ap.add_argument("--repeats", type=int, default=2)
    ap.add_argument("--checkpoint", default=None, help="one of our checkpoints (its size) for random weights")
    args = ap.parse_args()
    if args.checkpoint:  # trained weights: scores spread out as in a real evaluation
        model, cfg, _ = load_model(args.checkpoint, "retrieval")
    else:
        cfg = model_config(args.size, args.res)
        torch.manual_seed(0)
        model = create_model("retrieval", cfg)
    model.eval()
    images, ids, mask = inputs(cfg, args.images, args.texts, args.world)
    t = time.perf_counter()
    image_states, image_feat = model.encode_image(images)
    text_states, text_feat = model.encode_text(ids, mask)
    encode_s = time.perf_counter() - t
    print(f"# {args.checkpoint or args.size} at {cfg.vision.image_res} px: {len(images)} images, {len(ids)} texts, "
          f"k_test {args.k}; CPU, {torch.get_num_threads()} threads, torch {torch.__version__}")
    print(f"encode (ViT + text encoder, all items): {encode_s:.2f} s")
    results, times = {}, {}
    for share in (False, True, False, True)[: 2 * args.repeats]:
        model.cfg.share_cross_kv = share
        t = time.perf_counter()
        results[share] = rerank_scores(model, image_states, image_feat, text_states, mask, text_feat, args.k)
        times.setdefault(share, []).append(time.perf_counter() - t)
    old, new = min(times[False]), min(times[True])
    pairs = list(zip(results[False], results[True], strict=True))
    same_rank = all(torch.equal(a.topk(min(args.k, a.shape[1])).indices, b.topk(min(args.k, b.shape[1])).indices)
                    for a, b in pairs)
    diff = max((a - b).abs().max().item() for a, b in pairs)
    print(f"re-rank, per-pair keys/values (before): {old:.2f} s")
    print(f"re-rank, shared keys/values:            {new:.2f} s")
    print(f"identical top-{args.k} rankings: {same_rank}; largest score difference {diff:.2e}")
    if not same_rank:  # float rounding can swap two candidates whose scores tie to ~1e-6
        moved = sum(int((a.topk(min(args.k, a.shape[1])).indices != b.topk(min(args.k, b.shape[1])).indices)
                        .any(1).sum()) for a, b in pairs)
        ties = all(ranks_agree_up_to(a, b, min(args.k, a.shape[1]), 1e-5) for a, b in pairs)
        print(f"queries whose top-{args.k} order differs: {moved}; every difference a tie within 1e-5: {ties}")
    print(f"speedup: {old / new:.2f}")


if __name__ == "__main__":
    main()
