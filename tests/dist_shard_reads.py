"""Run under torchrun by tests/test_shards.py: pre-training on shards, each loader process logging what it reads
(rank, process id, epoch, sample) to a file of its own. `--resume auto` first continues a killed run;
STEP_DELAY (seconds per optimiser step) slows the steps so that a test can kill the run between two of them."""

import os
import sys
import time
from pathlib import Path

import torch

from albef_lab import distributed as D
from albef_lab.shapesworld import load_config
from albef_lab.train import data
from albef_lab.train.engine import Trainer

world, out, *overrides = sys.argv[1:]
resume = None
if overrides[:2] == ["--resume", "auto"]:
    resume, overrides = "auto", overrides[2:]
cfg = load_config(None, [*overrides, f"data.root={world}", f"train.output_dir={out}"], "tiny")
read = data.SeededDataset.__getitem__


def logged(self, index):
    item = read(self, index)
    with open(Path(out) / f"reads-{os.getpid()}.txt", "a") as f:
        f.write(f"{os.environ['RANK']} {os.getpid()} {self.epoch} {self.dataset.entries[index]['__member__']}\n")
    return item


data.SeededDataset.__getitem__ = logged
adamw_step = torch.optim.AdamW.step


def slow_step(self, *args, **kwargs):
    time.sleep(float(os.environ.get("STEP_DELAY", "0")))
    return adamw_step(self, *args, **kwargs)


torch.optim.AdamW.step = slow_step
Path(out).mkdir(parents=True, exist_ok=True)
Trainer(cfg, resume=resume).run()
D.cleanup()
