"""The benchmark scripts run end to end on tiny inputs and print what scripts read from them (their figures
are never asserted: timing belongs to the benchmarks, not to tests)."""

import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from tests.helpers import load_module

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


def run(script: str, *args: str) -> str:
    out = subprocess.run([sys.executable, str(BENCH / script), *args], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    return out.stdout


def speedup(stdout: str) -> float:
    last = stdout.strip().splitlines()[-1]
    assert re.fullmatch(r"speedup: \d+\.\d\d", last), last
    return float(last.split()[1])


def test_retrieval_bench_checks_identical_rankings():
    out = run("retrieval_bench.py", "--size", "tiny", "--images", "8", "--texts", "24", "--k", "4", "--repeats", "1")
    assert "identical top-4 rankings: True" in out
    assert speedup(out) > 0


def test_ranks_agree_up_to_accepts_swapped_ties_only():
    bench = load_module(BENCH / "retrieval_bench.py")
    ref = torch.tensor([[5.0, 4.0, 4.0 + 1e-7, 1.0]])
    tie_swapped = torch.tensor([[5.0, 4.0 + 1e-7, 4.0, 1.0]])
    real_swap = torch.tensor([[4.0, 5.0, 3.9, 1.0]])
    assert bench.ranks_agree_up_to(ref, tie_swapped, 3, 1e-5)
    assert not bench.ranks_agree_up_to(ref, real_swap, 3, 1e-5)
    assert not bench.ranks_agree_up_to(ref, torch.tensor([[5.0, 4.0, 0.0, 3.0]]), 3, 1e-5)  # in order, wrong set


def test_vqa_bench_checks_identical_rankings():
    out = run("vqa_bench.py", "--size", "tiny", "--res", "32", "--questions", "2", "--k", "8", "--answers", "40",
              "--repeats", "1")
    assert "identical answer rankings: True" in out
    assert speedup(out) > 0


@pytest.mark.parametrize("isolate", [False, True])
def test_pretrain_bench_reports_every_variant(isolate):
    args = ["--preset", "tiny", "--batch", "4", "--steps", "1", "--warmup", "0", "--text-len", "8"]
    if isolate:
        args += ["--isolate", "--skip", "explicit-attention fp32", "per-pair K/V bf16 autocast",
                 "shared K/V bf16 autocast", "per-pair K/V bf16 + act. ckpt", "shared K/V bf16 + act. ckpt"]
    out = run("pretrain_bench.py", *args)
    rows = [ln for ln in out.splitlines() if ln.startswith(("per-pair", "shared", "explicit"))]
    assert len(rows) == (5 if isolate else 12)
    assert speedup(out) > 0
    if not isolate:
        assert float(re.search(r"^mlm head speedup: ([\d.]+)$", out, re.M).group(1)) > 0


def test_onnx_bench_checks_then_times_every_part():
    out = run("onnx_bench.py", "--presets", "tiny", "--sizes", "1", "2", "--repeats", "1", "--length", "8")
    assert out.count("ok ") == 5 and "BAD" not in out
    assert len(re.findall(r"^(image|text|itm)\s+[12]\s", out, re.M)) == 6
    last = out.strip().splitlines()[-1]
    assert re.fullmatch(r"onnx speedup: \d+\.\d\d", last), last


def test_profile_step_groups_the_ops():
    out = run("profile_step.py", "--preset", "tiny", "--batch", "4", "--steps", "1", "--top", "5")
    assert "matrix products" in out
    assert re.search(r"^outside ops: \d+\.\d%$", out.strip().splitlines()[-1])


def test_gpu_check_dry_run_on_the_cpu():
    """The GPU check's script, as a dry run: every block prints, and a bf16 loss far from fp32's fails it."""
    args = ["--preset", "tiny", "--device", "cpu", "--batch", "4", "--max-batch", "8", "--steps", "1",
            "--res", "64", "--images", "8", "--skip-loader", "--no-compile"]
    out = run("gpu_check.py", *args)
    assert re.search(r"^\s+4\s+False\s+[\d.]+\s+[\d.]+", out, re.M) and "largest batch that fits: 8" in out
    assert re.search(r"^loss_mlm\s+fp32", out, re.M) and "retrieval, 8 images x 40 texts at 64 px" in out
    assert out.strip().splitlines()[-1] == "gpu check: ok"
    strict = subprocess.run([sys.executable, str(BENCH / "gpu_check.py"), *args, "--rtol", "1e-9"],
                            capture_output=True, text=True, timeout=300)
    assert strict.returncode == 1 and "differ from fp32" in strict.stdout


def test_loader_bench_times_both_transforms_on_jpegs():
    out = run("loader_bench.py", "--images", "12", "--rounds", "1", "--workers", "1", "--epochs", "1", "--res", "64")
    assert re.search(r"^per core .*: original \d+ images/s, ours \d+ images/s \(from files\), \d+ images/s from tar "
                     r"shards \(shards / files \d+\.\d\d\)$", out, re.M)
    assert re.search(r"^\s+1\s+\d+\s+\d+\s+\d+$", out, re.M)  # DataLoader: original, files, shards
    stages = [ln.split() for ln in out.splitlines() if ln.strip().startswith(("read", "crop", "Random", "to float"))]
    assert len(stages) == 4
    assert re.fullmatch(r"loader speedup: \d+\.\d\d", out.strip().splitlines()[-1])


def test_eval_memory_runs_every_method_and_checks_rankings():
    out = run("eval_memory.py", "--size", "tiny", "--images", "6", "--texts", "20", "--k", "3")
    assert "ours: top-3 rankings identical to the original's: True" in out
    assert "streamed: top-3 rankings identical to the original's: True" in out
    assert re.fullmatch(r"memory ratio: \d+\.\d\d", out.strip().splitlines()[-1])
