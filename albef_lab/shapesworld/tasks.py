"""ShapesWorld's tasks: pre-training with negatives the scene graphs rule on and a heavier ITM loss; retrieval and
grounding fine-tuning with the recipe's share of uniform ITM negatives."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset

from albef_lab.data import datasets as DS
from albef_lab.shapesworld.negatives import SceneGraphNegatives, known_matches, train_scenes
from albef_lab.train.tasks import GroundingTask, RetrievalTask, Task


class ShapesWorldPretrainTask(Task):
    """`Task` (pre-training) where the data is a ShapesWorld: each batch's negatives drawn by
    `SceneGraphNegatives`, ITM weighted by `shapesworld.itm_weight`, the held-out ITM's negatives kept false."""

    def train_set(self) -> Dataset:
        ds = super().train_set()
        scenes_file = Path(self.cfg.data.root) / "scenes.json"
        self.scenes = train_scenes(scenes_file, ds.image_files)  # by image index
        if self.scenes is None and self.cfg.shapesworld.itm_finish_steps:  # now, not after the training
            raise ValueError(f"shapesworld.itm_finish_steps needs ShapesWorld's scene graphs ({scenes_file} naming "
                             f"every training image) to know which captions are false; set it to 0")
        return ds

    def forward(self, net: nn.Module, batch, alpha: float, gen: torch.Generator, device: torch.device) -> dict:
        images, captions, image_ids = batch
        sw, m = self.cfg.shapesworld, self.cfg.model
        same = image_ids.to(device) if m.fix_duplicate_negatives else None
        matches = None
        if self.scenes is not None:  # images may be flipped (with their captions' left and right swapped)
            scenes = [self.scenes[i] for i in image_ids.tolist()]
            matches = torch.tensor(known_matches(captions, scenes, flips=True), device=device)
        negatives = SceneGraphNegatives(matches, exclude=sw.known_matches,
                                        uniform=sw.uniform_negatives if m.hard_negatives else 1.0)
        ids, mask = self.text(captions, device)
        out = net(images.to(device, non_blocking=True), ids, mask, alpha, generator=gen, image_ids=same,
                  negatives=negatives)
        if sw.itm_weight != 1.0:
            out["loss"] = out["loss_ita"] + sw.itm_weight * out["loss_itm"] + out["loss_mlm"]
        return out

    def truth(self, val: DS.RetrievalEvalDataset) -> Tensor | None:
        """The scene graphs' [images, texts] truth (worked out at the first evaluation, kept for the others)."""
        if not hasattr(self, "_truth"):
            scenes = train_scenes(Path(self.cfg.data.root) / "scenes.json", [e["image"] for e in val.entries])
            self._truth = None if scenes is None else torch.tensor(known_matches(val.text, scenes)).t()
        return self._truth


class _UniformShare:
    """Fine-tuning's ITM negatives as the recipe's pre-training draws them, less the scene graphs (the fine-tuning
    files carry none): `shapesworld.uniform_negatives` of them uniform, the rest mined."""

    def negatives(self) -> SceneGraphNegatives:
        share = self.cfg.shapesworld.uniform_negatives if self.cfg.model.hard_negatives else 1.0
        return SceneGraphNegatives(None, uniform=share)


class ShapesWorldRetrievalTask(_UniformShare, RetrievalTask):
    pass


class ShapesWorldGroundingTask(_UniformShare, GroundingTask):
    pass


TASKS = {"pretrain": ShapesWorldPretrainTask, "retrieval": ShapesWorldRetrievalTask,
         "grounding": ShapesWorldGroundingTask}
