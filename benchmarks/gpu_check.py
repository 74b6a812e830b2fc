"""The GPU check, in one call of at most ten minutes: what a user meets when they take pre-training to a GPU.

    python benchmarks/gpu_check.py                      # on the GPU: base, bf16, batch 64, then the largest batch
    python benchmarks/gpu_check.py --preset tiny --device cpu --batch 4 --max-batch 8 --steps 1   # a dry run

Prints, one block each: the device and the attention kernels torch may pick; base pre-training steps at bf16 for
batch 64 and then doubling batches until memory runs out (images/s, peak memory), eager and `torch.compile`; one
step's losses in bf16 against fp32 from the same weights and batch (within bf16's tolerance); retrieval
re-ranking at 384 px on the device (ITC top-k, then ITM); the data loader's images/s on the machine's cores
through `benchmarks/loader_bench.py`. Expected on one H100 (base, bf16, batch 64): several hundred images/s, and
a last line `gpu check: ok` when the bf16 losses agree with fp32's.
"""

from __future__ import annotations

import argparse
import copy
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from pretrain_bench import setup  # noqa: E402
from retrieval_bench import inputs, model_config  # noqa: E402

from albef_lab.eval.retrieval import rerank_scores  # noqa: E402
from albef_lab.models.factory import create_model  # noqa: E402
from albef_lab.train.schedule import adamw  # noqa: E402

HERE = Path(__file__).resolve().parent


def kernels(device: torch.device) -> str:
    if device.type != "cuda":
        return f"CPU, {torch.get_num_threads()} threads"
    b = torch.backends.cuda
    return (f"{torch.cuda.get_device_name(device)}; SDPA flash {b.flash_sdp_enabled()}, memory-efficient "
            f"{b.mem_efficient_sdp_enabled()}, cuDNN {b.cudnn_sdp_enabled()}, math {b.math_sdp_enabled()}; "
            f"bf16 {torch.cuda.is_bf16_supported()}")


def time_steps(base, batch: tuple, device: torch.device, steps: int, compile_model: bool) -> tuple[float, float]:
    """Seconds per bf16 step and peak memory (MiB; NaN on a CPU) of a copy of `base`."""
    model = copy.deepcopy(base).to(device)
    opt = adamw(model, 1e-4, 0.02)
    images, ids, mask = (x.to(device) for x in batch)
    gen = torch.Generator(device=device).manual_seed(0)
    forward = torch.compile(model) if compile_model else model

    def step():
        with torch.autocast(device.type, dtype=torch.bfloat16):
            loss = forward(images, ids, mask, 0.4, generator=gen)["loss"]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):  # warm-up (and compilation)
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    peak = torch.cuda.max_memory_allocated() / 2**20 if device.type == "cuda" else float("nan")
    return (time.perf_counter() - t0) / steps, peak


def bf16_losses_agree(base, batch: tuple, device: torch.device, rtol: float) -> bool:
    """One step's losses in bf16 autocast against fp32, same weights, batch and draws."""
    model = copy.deepcopy(base).to(device)
    images, ids, mask = (x.to(device) for x in batch)
    out = {}
    for name, cast in (("fp32", None), ("bf16", torch.bfloat16)):
        gen = torch.Generator(device=device).manual_seed(0)
        with torch.no_grad(), torch.autocast(device.type, dtype=cast, enabled=cast is not None):
            out[name] = {k: float(v) for k, v in model(images, ids, mask, 0.4, generator=gen).items()
                         if k.startswith("loss")}
    ok = True
    for k, ref in out["fp32"].items():
        rel = abs(out["bf16"][k] - ref) / max(abs(ref), 1e-6)
        ok &= rel <= rtol
        print(f"{k:<10} fp32 {ref:.4f}  bf16 {out['bf16'][k]:.4f}  relative {rel:.4f}")
    return ok


@torch.no_grad()
def rerank_seconds(size: str, res: int, n_images: int, n_texts: int, k: int, device: torch.device) -> float:
    """Retrieval evaluation's two halves on the device: encode everything, then ITM re-ranks ITC's top k."""
    torch.manual_seed(0)
    cfg = model_config(size, res)
    model = create_model("retrieval", cfg).to(device).eval()
    images, ids, mask = (x.to(device) for x in inputs(cfg, n_images, n_texts, None))
    if device.type == "cuda":
        torch.cuda.synchronize()
    t0 = time.perf_counter()
    image_states, image_feat = model.encode_image(images)
    text_states, text_feat = model.encode_text(ids, mask)
    rerank_scores(model, image_states, image_feat, text_states, mask, text_feat, k)
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - t0


def script(name: str, *args: str) -> None:
    """Another benchmark of this folder, its output passed through."""
    print(f"$ python benchmarks/{name} {' '.join(args)}", flush=True)
    subprocess.run([sys.executable, str(HERE / name), *args], check=False)


def main(argv: list[str] | None = None) -> bool:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--preset", default="base")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--max-batch", type=int, default=1024, help="doubling stops here or where memory runs out")
    ap.add_argument("--steps", type=int, default=5)
    ap.add_argument("--text-len", type=int, default=30)
    ap.add_argument("--no-compile", action="store_true")
    ap.add_argument("--rtol", type=float, default=0.05, help="bf16 losses against fp32's, relative")
    ap.add_argument("--res", type=int, default=384, help="retrieval's image size")
    ap.add_argument("--images", type=int, default=256, help="retrieval: images (texts: 5 per image)")
    ap.add_argument("--skip-loader", action="store_true", help="leave out the data-loader benchmark")
    args = ap.parse_args(argv)
    device = torch.device(args.device)
    print(f"# {kernels(device)}; torch {torch.__version__}", flush=True)

    print(f"{'batch':>6} {'compiled':>9} {'s/step':>8} {'images/s':>9} {'peak MiB':>9}")
    batch, last = args.batch, None
    while batch <= args.max_batch:
        try:
            base, data = setup(args.preset, batch, args.text_len)
            for compiled in (False,) if args.no_compile or batch != args.batch else (False, True):
                dt, peak = time_steps(base, data, device, args.steps, compiled)
                print(f"{batch:>6} {str(compiled):>9} {dt:>8.3f} {batch / dt:>9.1f} {peak:>9.0f}", flush=True)
            last = batch
        except torch.OutOfMemoryError:
            print(f"{batch:>6}: out of memory")
            break
        finally:
            if device.type == "cuda":
                torch.cuda.empty_cache()
        batch *= 2
    print(f"largest batch that fits: {last}")

    base, data = setup(args.preset, min(args.batch, 16), args.text_len)
    ok = bf16_losses_agree(base, data, device, args.rtol)
    dt = rerank_seconds(args.preset, args.res, args.images, 5 * args.images, 16, device)
    print(f"retrieval, {args.images} images x {5 * args.images} texts at {args.res} px, k 16: {dt:.2f} s")
    if not args.skip_loader:
        cores = os.cpu_count() or 1
        workers = sorted({n for n in (1, cores // 2, cores) if n})
        script("loader_bench.py", "--images", "300", "--workers", *map(str, workers))
    print(f"gpu check: {'ok' if ok else 'bf16 losses differ from fp32 beyond the tolerance'}")
    return ok


if __name__ == "__main__":
    sys.exit(0 if main() else 1)
