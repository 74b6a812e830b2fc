"""onnxruntime against torch on this CPU: each exported part (image encoder, text encoder, ITM head) at a few batch
sizes, random weights, in one process with the same thread count; the export's equality check is printed first.

    python benchmarks/onnx_bench.py --presets tiny base
    python benchmarks/onnx_bench.py --presets tiny --repeats 3 --sizes 1 4   # a quick run

The last line is `onnx speedup: N.NN` (torch's time over onnxruntime's, the geometric mean over every row).
"""

from __future__ import annotations

import argparse
import math
import statistics
import tempfile
import time

import torch

from albef_lab.models.factory import create_model
from albef_lab.onnx_export import PARTS, WRAPPERS, export_onnx, format_checks, sample_inputs
from albef_lab.shapesworld import load_config


def timed(fn, repeats: int) -> float:
    """Median seconds of `repeats` calls after one untimed call."""
    fn()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def bench(preset: str, sizes: list[int], length: int, repeats: int) -> list[float]:
    import onnxruntime as ort

    torch.manual_seed(0)
    model = create_model("pretrain", load_config(None, [], preset).model).eval()
    ratios = []
    with tempfile.TemporaryDirectory() as out:
        t0 = time.perf_counter()
        _, checks = export_onnx(model, out)
        print(f"{preset}: exported in {time.perf_counter() - t0:.0f} s "
              f"({model.cfg.vision.image_res} px); onnxruntime against torch:")
        print(format_checks(checks))
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = torch.get_num_threads()
        print(f"{'part':<6} {'batch':>5} {'length':>6} {'torch ms':>9} {'ort ms':>9} {'ratio':>6}")
        for name, part in PARTS.items():
            runner = ort.InferenceSession(f"{out}/{part.file}", opts, providers=["CPUExecutionProvider"])
            wrapper = WRAPPERS[name](model).eval()
            for batch in sizes:
                x = sample_inputs(model, batch, length)[name]
                feed = {k: v.numpy() for k, v in x.items()}
                with torch.no_grad():
                    t_torch = timed(lambda: wrapper(*(x[k] for k in part.inputs)), repeats)  # noqa: B023
                t_ort = timed(lambda: runner.run(None, feed), repeats)  # noqa: B023
                ratios.append(t_torch / t_ort)
                print(f"{name:<6} {batch:>5} {length if name != 'image' else '-':>6} {1e3 * t_torch:>9.1f} "
                      f"{1e3 * t_ort:>9.1f} {t_torch / t_ort:>6.2f}")
    return ratios


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--presets", nargs="+", default=["tiny", "base"], choices=["tiny", "base"])
    ap.add_argument("--sizes", nargs="+", type=int, default=[1, 16], help="batch sizes")
    ap.add_argument("--length", type=int, default=30, help="text length in tokens")
    ap.add_argument("--repeats", type=int, default=10)
    a = ap.parse_args()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads")
    ratios = [r for preset in a.presets for r in bench(preset, a.sizes, a.length, a.repeats)]
    print(f"onnx speedup: {math.exp(sum(map(math.log, ratios)) / len(ratios)):.2f}")


if __name__ == "__main__":
    main()
