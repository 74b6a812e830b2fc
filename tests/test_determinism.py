"""ShapesWorld, and a training run on it, are the same in every process, whatever Python's hash seed."""

import filecmp
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.helpers import make_world, small_cfg

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return make_world(tmp_path_factory.mktemp("world"), 160, 3)


def test_make_world_in_two_processes_with_different_hash_seeds_is_byte_identical(tmp_path):
    outs = []
    for hash_seed in ("1", "987"):
        out = tmp_path / f"w{hash_seed}"
        env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONPATH=str(ROOT))
        proc = subprocess.run([sys.executable, "-m", "albef_lab", "make-world", "--out", str(out), "--seed", "7",
                               "--images", "60", "--res", "32", "--noise", "0.3", "--workers", "1", "--quiet"],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs.append(out)
    files = sorted(str(p.relative_to(outs[0])) for p in outs[0].rglob("*") if p.is_file())
    assert "nlvr_train.json" in files and len(files) > 60
    assert sorted(str(p.relative_to(outs[1])) for p in outs[1].rglob("*") if p.is_file()) == files
    _, mismatch, errors = filecmp.cmpfiles(outs[0], outs[1], files, shallow=False)
    assert not mismatch and not errors, mismatch


@pytest.mark.parametrize("encoder", ["shapesworld.warmup_minutes=0", "shapesworld.warmup_steps=5"],
                         ids=["trained-from-scratch", "warmed-up"])
def test_pretraining_in_two_processes_gives_bit_identical_weights(world, tmp_path, encoder):
    """Same seed, same files, two threads each: the same weights to the last bit. Gathers with repeated rows
    (mined negatives, an image's cross-attention keys shared by its pairs) once summed their gradients in a
    thread-dependent order, and two runs of one seed drifted apart (1e-5 after 15 steps, a point of R@1 later).
    Both encoders: trained with the rest (its gradients pass those gathers), and the tiny recipe's warm-up (by
    steps; by minutes it would stop wherever the clock says); then the recipe's last ITM step."""
    weights = []
    for hash_seed in ("1", "987"):
        out = tmp_path / f"run{hash_seed}"
        env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONPATH=str(ROOT))
        proc = subprocess.run([sys.executable, "-m", "albef_lab", "pretrain", f"data.root={world}",
                               f"train.output_dir={out}", "model.vision.image_res=32", "train.threads=2",
                               # half the tiny widths: still several threads' worth of work per gather
                               "model.vision.width=64", "model.text.hidden_size=64", "model.text.encoder_width=64",
                               "model.text.intermediate_size=256", "model.vision.depth=2",
                               "train.max_steps=3", "train.warmup_steps=1", "train.progress=false",
                               "train.eval_every=100", "train.save_every=3", "train.max_minutes=0",
                               "shapesworld.itm_finish_steps=20", encoder],  # the tiny recipe's last ITM step too
                              env=env, capture_output=True, text=True, timeout=600)
        assert proc.returncode == 0, proc.stderr[-2000:]
        weights.append(torch.load(out / "model.pth", map_location="cpu", weights_only=False)["model"])
    assert weights[0].keys() == weights[1].keys()
    differ = [k for k in weights[0] if not torch.equal(weights[0][k], weights[1][k])]
    assert not differ, differ[:10]


class RepeatedAtomicAdds(TorchDispatchMode):
    """Counts index_put(accumulate=True) over repeated positions (the backward of `x[index]` when `index` repeats).
    On the CPU its threads add those with atomics, in the order the scheduler lets them: alone, a run repeats
    itself; beside another busy process, it ends on other weights (a recipe run that shared the CPU ended 3 points
    of hardest-negative ITM apart). index_select's backward adds in a fixed order."""

    OPS = (torch.ops.aten.index_put.default, torch.ops.aten.index_put_.default,
           torch.ops.aten._index_put_impl_.default)

    def __init__(self):
        super().__init__()
        self.found: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in self.OPS and (args[3] if len(args) > 3 else kwargs.get("accumulate", False)):
            index = [i for i in args[1] if i is not None]
            if all(i.dtype != torch.bool for i in index):  # a mask names each position once
                where = torch.stack(torch.broadcast_tensors(*index)).reshape(len(index), -1)
                if torch.unique(where, dim=1).shape[1] < where.shape[1]:
                    self.found.append(tuple(args[0].shape))
        return func(*args, **kwargs)


@pytest.mark.parametrize("task", ["pretrain", "pretrain_nlvr", "retrieval", "grounding", "vqa", "nlvr", "ve"])
def test_no_training_step_adds_repeated_rows_in_a_scheduler_chosen_order(world, tmp_path, task):
    """Every task's training, the tiny recipe's vision warm-up (its tokens under two boxes) and last ITM step
    included: a gradient never passes a gather with repeated rows by advanced indexing."""
    from albef_lab.train.engine import train

    extra = ["shapesworld.warmup_steps=2", "shapesworld.itm_finish_steps=2"] if task == "pretrain" else []
    cfg = small_cfg(world, tmp_path / "run", "train.max_steps=2", "train.eval_every=100", "train.save_every=100",
                    *extra)
    with RepeatedAtomicAdds() as mode:
        train(cfg, task)
    assert not mode.found, f"{task}: index_put(accumulate=True) over repeated rows of tensors shaped {mode.found}"
