"""Where a pre-training step's time goes: torch.profiler over a few steps, ops grouped into matrix products,
attention, element-wise, copies/indexing, optimizer, and the time outside any op (Python, dispatch).

    python benchmarks/profile_step.py --preset tiny --batch 64
    python benchmarks/profile_step.py --preset base --batch 4 --steps 2

The last line is `outside ops: N.N%` (the share of wall time no op accounts for: the overhead to remove).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
from torch.profiler import ProfilerActivity, profile

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain_bench import setup  # noqa: E402

from albef_lab.train.schedule import adamw  # noqa: E402

GROUPS = {  # first match wins; names are aten op names
    "matrix products": ("aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::linear",
                        "aten::matmul", "aten::convolution", "aten::mkldnn_convolution"),
    "attention (SDPA)": ("aten::_scaled_dot_product", "aten::_flash_attention", "aten::scaled_dot_product"),
    "optimizer": ("aten::_foreach", "Optimizer", "aten::_fused_adamw"),
    "copies / indexing": ("aten::copy_", "aten::clone", "aten::contiguous", "aten::cat", "aten::index",
                          "aten::gather", "aten::scatter", "aten::stack", "aten::to", "aten::_to_copy",
                          "aten::repeat", "aten::expand", "aten::masked_fill", "aten::fill_", "aten::zero_",
                          "aten::zeros", "aten::empty", "aten::ones", "aten::full", "aten::arange"),
}


def group(name: str) -> str:
    return next((g for g, prefixes in GROUPS.items() if name.startswith(prefixes)), "element-wise / other ops")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--steps", type=int, default=3)
    ap.add_argument("--text-len", type=int, default=20)
    ap.add_argument("--top", type=int, default=15)
    args = ap.parse_args()
    model, (images, ids, mask) = setup(args.preset, args.batch, args.text_len)
    opt = adamw(model, 1e-4, 0.02)  # as the training engine
    gen = torch.Generator().manual_seed(0)

    def step() -> None:
        model(images, ids, mask, 0.4, generator=gen)["loss"].backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    step()  # warm-up
    with profile(activities=[ProfilerActivity.CPU]) as prof:
        t0 = time.perf_counter()
        for _ in range(args.steps):
            step()
        wall = (time.perf_counter() - t0) / args.steps
    events = [e for e in prof.key_averages() if e.key.startswith(("aten::", "Optimizer"))]
    print(f"# preset {args.preset}, batch {args.batch}, {args.steps} profiled steps, CPU "
          f"({torch.get_num_threads()} threads), torch {torch.__version__}")
    print(prof.key_averages().table(sort_by="self_cpu_time_total", row_limit=args.top))
    totals: dict[str, float] = {}
    for e in events:
        totals[group(e.key)] = totals.get(group(e.key), 0.0) + e.self_cpu_time_total / 1e6 / args.steps
    inside = sum(totals.values())
    print(f"wall time per step: {wall:.3f} s (under the profiler)")
    for g, t in sorted(totals.items(), key=lambda kv: -kv[1]):
        print(f"  {g:<26} {t:7.3f} s  {100 * t / wall:5.1f}%")
    print(f"outside ops: {100 * max(wall - inside, 0.0) / wall:.1f}%")


if __name__ == "__main__":
    main()
