"""Run under torchrun by tests/test_engine.py: a few steps on 2 gloo ranks, then each rank dumps its state."""

import sys
from pathlib import Path

import torch

from albef_lab import distributed as D
from albef_lab.models.record import recording
from albef_lab.shapesworld import load_config
from albef_lab.train.engine import Trainer

world, out, *overrides = sys.argv[1:]
cfg = load_config(None, [*overrides, f"data.root={world}", f"train.output_dir={out}", "train.max_steps=3"], "tiny")
trainer = Trainer(cfg)
result = trainer.run()
rank = D.rank()
ptr_before = int(trainer.model.queue_ptr)
g = torch.Generator().manual_seed(100 + rank)
images = torch.randn(8, 3, 32, 32, generator=g)
ids, mask = trainer.tokenizer([f"there is a red circle number {rank}"] * 4 + ["two shapes"] * 4)
with torch.no_grad(), recording() as rec:
    trainer.ddp(images, ids, mask, 0.0, generator=trainer.gen)
Path(out).mkdir(parents=True, exist_ok=True)
torch.save({"state": trainer.model.state_dict(), "feat_m": rec["image_feat_m"], "ptr_before": ptr_before,
            "ptr_after": int(trainer.model.queue_ptr), "steps": result["step"]}, Path(out) / f"rank{rank}.pt")
D.cleanup()
