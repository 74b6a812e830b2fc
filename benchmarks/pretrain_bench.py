"""Pre-training step speed and memory: ours (cross-attention keys/values shared, MLM's vocabulary head at the
masked positions only) vs the original's path (per-pair keys/values, the head everywhere), SDPA vs explicit
attention, fp32 vs bf16, activation checkpointing.

All variants run in this one process on the same random batch; ratios are against the first (the original's
path, fp32). The last lines are `mlm head speedup: N.NN` (the head at masked positions over everywhere, shared
keys/values both) and `speedup: N.NN` (ours over the original's path, fp32).

    python benchmarks/pretrain_bench.py --preset tiny --batch 64 [--steps 10] [--device cuda] [--isolate]
"""

from __future__ import annotations

import argparse
import copy
import resource
import subprocess
import sys
import time
from contextlib import nullcontext

import torch

from albef_lab.models.albef import ALBEF
from albef_lab.models.attention import attention_modules, capture_attention
from albef_lab.shapesworld import load_config
from albef_lab.train.schedule import adamw

# The first row is the baseline, the original's path (model.share_cross_kv=false model.mlm_masked_only=false);
# "per-pair" rows take the original's path, "shared" rows ours, unless the name says otherwise.
VARIANTS = [
    ("per-pair K/V fp32 (before)", dict(keep_attention=False, dtype=None, ckpt=False, share=False)),
    ("shared K/V fp32", dict(keep_attention=False, dtype=None, ckpt=False, share=True)),
    ("shared K/V fp32, MLM head all", dict(keep_attention=False, dtype=None, ckpt=False, share=True, masked=False)),
    ("explicit-attention fp32", dict(keep_attention=True, dtype=None, ckpt=False, share=True)),
    ("per-pair K/V bf16 autocast", dict(keep_attention=False, dtype=torch.bfloat16, ckpt=False, share=False)),
    ("shared K/V bf16 autocast", dict(keep_attention=False, dtype=torch.bfloat16, ckpt=False, share=True)),
    ("per-pair K/V fp32 + act. ckpt", dict(keep_attention=False, dtype=None, ckpt=True, share=False)),
    ("shared K/V fp32 + act. ckpt", dict(keep_attention=False, dtype=None, ckpt=True, share=True)),
    ("per-pair K/V bf16 + act. ckpt", dict(keep_attention=False, dtype=torch.bfloat16, ckpt=True, share=False)),
    ("shared K/V bf16 + act. ckpt", dict(keep_attention=False, dtype=torch.bfloat16, ckpt=True, share=True)),
    ("per-pair K/V fp32 (again)", dict(keep_attention=False, dtype=None, ckpt=False, share=False)),
    ("shared K/V fp32 (again)", dict(keep_attention=False, dtype=None, ckpt=False, share=True)),
]
# the last two repeat the first two: drift of the machine during the run shows as a difference


class SavedActivations:
    """Bytes of the tensors autograd keeps for the backward pass (distinct storages): what activation
    checkpointing and bf16 shrink. Exact and device-independent, unlike a CPU process's RSS."""

    def __init__(self):
        self.bytes, self.seen = 0, set()

    def pack(self, t: torch.Tensor):
        key = (t.untyped_storage().data_ptr(), t.device)
        if key not in self.seen:
            self.seen.add(key)
            self.bytes += t.untyped_storage().nbytes()
        return t

    def __enter__(self):
        self.ctx = torch.autograd.graph.saved_tensors_hooks(self.pack, lambda t: t)
        self.ctx.__enter__()
        return self

    def __exit__(self, *exc):
        self.ctx.__exit__(*exc)


def setup(name: str, batch: int, text_len: int) -> tuple[ALBEF, tuple[torch.Tensor, ...]]:
    """A fresh model of preset `name` (queue a multiple of the batch) and one random batch."""
    cfg = load_config(None, [], name).model
    cfg.queue_size = max(cfg.queue_size // batch, 1) * batch
    torch.manual_seed(0)
    model = ALBEF(cfg)
    res = cfg.vision.image_res
    images = torch.randn(batch, 3, res, res)
    ids = torch.randint(1000 if cfg.text.vocab_size > 2000 else 104, cfg.text.vocab_size, (batch, text_len))
    ids[:, 0] = cfg.cls_token_id
    return model, (images, ids, torch.ones_like(ids))


def run_variant(base: ALBEF, batch: tuple, device: torch.device, steps: int, keep_attention: bool,
                dtype, ckpt: bool, share: bool, masked: bool | None = None, warmup: int = 2,
                in_place: bool = False) -> tuple[float, float, float]:
    """`in_place`: train `base` itself (one copy of the weights in memory, for a process's peak RSS)."""
    model = (base if in_place else copy.deepcopy(base)).to(device)
    model.cfg.share_cross_kv = share
    model.cfg.mlm_masked_only = share if masked is None else masked
    kept = attention_modules(model) if keep_attention else []  # the explicit path, as Grad-CAM takes it
    model.set_grad_checkpointing(ckpt)
    opt = adamw(model, 1e-4, 0.02)  # as the training engine
    images, ids, mask = (x.to(device) for x in batch)
    gen = torch.Generator(device=device).manual_seed(0)
    cast = torch.autocast(device.type, dtype=dtype) if dtype is not None else nullcontext()

    def step(hooks=None):
        with hooks or nullcontext(), cast, capture_attention(*kept):
            loss = model(images, ids, mask, 0.4, generator=gen)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(warmup):
        step()
    saved = SavedActivations()
    step(saved)
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    dt = (time.perf_counter() - t0) / steps
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return dt, saved.bytes / 2**20, peak


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--text-len", type=int, default=20)
    ap.add_argument("--isolate", action="store_true",
                    help="each variant in a fresh process, to report its peak RSS (process memory) too")
    ap.add_argument("--only", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--skip", nargs="*", default=[], help="variants to leave out (their names)")
    ap.add_argument("--warmup", type=int, default=2, help="untimed steps before the timed ones")
    args = ap.parse_args()
    if args.isolate:
        return isolated(args)
    device = torch.device(args.device)
    base, (images, ids, mask) = setup(args.preset, args.batch, args.text_len)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({torch.get_num_threads()} threads)"
    print(f"# preset {args.preset}, batch {args.batch}, text length {args.text_len}, {args.steps} timed steps, {name}")
    print(f"# torch {torch.__version__}; saved = activations kept for backward; peak = CUDA max allocated")
    print(f"{'variant':<30} {'s/step':>7} {'steps/s':>8} {'images/s':>9} {'saved MiB':>10} {'peak MiB':>9} "
          f"{'speed x':>8} {'saved x':>8}")
    base_dt = base_mem = None
    times = {}
    for name, kw in VARIANTS:
        if (args.only and name != args.only) or name in args.skip:
            continue
        if kw["dtype"] is torch.bfloat16 and device.type == "cuda" and not torch.cuda.is_bf16_supported():
            continue
        dt, mem, peak = run_variant(base, (images, ids, mask), device, args.steps, warmup=args.warmup,
                                    in_place=bool(args.only), **kw)
        times[name] = dt
        base_dt, base_mem = base_dt or dt, base_mem or max(mem, 1e-9)
        print(f"{name:<30} {dt:>7.3f} {1 / dt:>8.2f} {args.batch / dt:>9.1f} {mem:>10.1f} {peak:>9.0f} "
              f"{base_dt / dt:>8.2f} {mem / base_mem:>8.2f}")
    if args.only:
        print(f"peak RSS MiB: {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024:.0f}")
    elif VARIANTS[1][0] in times:
        before = (times[VARIANTS[0][0]] + times[VARIANTS[-2][0]]) / 2
        after = (times[VARIANTS[1][0]] + times[VARIANTS[-1][0]]) / 2
        if VARIANTS[2][0] in times:
            print(f"mlm head speedup: {times[VARIANTS[2][0]] / times[VARIANTS[1][0]]:.2f}")
        print(f"speedup: {before / after:.2f}")


def isolated(args) -> None:
    """Every variant in its own process: the only way to read one variant's peak process memory on a CPU."""
    rows = []
    for name, _ in VARIANTS[:-2]:
        if name in args.skip:
            continue
        cmd = [sys.executable, __file__, "--preset", args.preset, "--batch", str(args.batch), "--steps",
               str(args.steps), "--device", args.device, "--text-len", str(args.text_len), "--only", name,
               "--warmup", str(args.warmup)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True).stdout.splitlines()
        line = next(ln for ln in out if ln.startswith(name))
        rss = float(next(ln for ln in out if ln.startswith("peak RSS")).split()[-1])
        rows.append((name, float(line[len(name):].split()[0]), rss))
    print(f"# preset {args.preset}, batch {args.batch}: each variant in a fresh process")
    print(f"{'variant':<30} {'s/step':>7} {'peak RSS MiB':>13} {'RSS x':>6}")
    for name, dt, rss in rows:
        print(f"{name:<30} {dt:>7.3f} {rss:>13.0f} {rss / rows[0][2]:>6.2f}")
    print(f"speedup: {rows[0][1] / rows[1][1]:.2f}")


if __name__ == "__main__":
    main()
