"""Run under torchrun by tests/test_shards.py: pre-training on shards, each loader process logging what it reads
(rank, process id, epoch, sample) to a file of its own."""

import os
import sys
from pathlib import Path

from albef_lab import distributed as D
from albef_lab.shapesworld import load_config
from albef_lab.train import data
from albef_lab.train.engine import Trainer

world, out, *overrides = sys.argv[1:]
cfg = load_config(None, [*overrides, f"data.root={world}", f"train.output_dir={out}"], "tiny")
read = data.SeededDataset.__getitem__


def logged(self, index):
    item = read(self, index)
    with open(Path(out) / f"reads-{os.getpid()}.txt", "a") as f:
        f.write(f"{os.environ['RANK']} {os.getpid()} {self.epoch} {self.dataset.entries[index]['__member__']}\n")
    return item


data.SeededDataset.__getitem__ = logged
Path(out).mkdir(parents=True, exist_ok=True)
Trainer(cfg).run()
D.cleanup()
