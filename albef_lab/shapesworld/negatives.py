"""ITM negatives that ShapesWorld's scene graphs rule on, and what the scene graphs know of a batch.

In-batch mining (the paper's) draws as a negative any other caption of the batch, also one that happens to be
true of the image ("two shapes" of another two-shape scene). With the scene graphs such pairs are never drawn,
and a share of the negatives is drawn uniformly: mined ones alone held the tiny model's ITM loss at its constant
guess (docs/itm_recipe.md).
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import Tensor

from albef_lab.data.formats import read_json
from albef_lab.objectives.itm import Negatives, negative_weights, random_negatives, sample_negatives
from albef_lab.shapesworld import world as W


def train_scenes(scenes_file: Path, image_files: list[str]) -> list | None:
    """The scene of each image when the data root has ShapesWorld's `scenes.json` and it names every image."""
    if not scenes_file.is_file():
        return None
    by_image = {e["image"]: W.Scene.from_dict(e) for e in read_json(scenes_file)}
    if not all(f in by_image for f in image_files):
        return None
    return [by_image[f] for f in image_files]


def known_matches(captions: list[str], scenes: list, flips: bool = False) -> list[list[bool]]:
    """[i][j]: caption i is true of scene j.

    `flips`: the images may have been flipped left to right (with their captions' left and right swapped), so
    a caption that speaks of left or right counts as true when it holds of the scene or of its mirror image.
    """
    mirrors = [sc.mirrored() for sc in scenes] if flips else scenes

    def holds(c: str, j: int) -> bool:
        if W.caption_holds(scenes[j], c):
            return True
        return flips and ("left" in c or "right" in c) and W.caption_holds(mirrors[j], c)

    return [[holds(c, j) for j in range(len(scenes))] for c in captions]


def without_known(weights: Tensor, known: Tensor | None) -> Tensor:
    """`weights` with the pairs `known` to match zeroed, except in a row where nothing else would be left."""
    if known is None:
        return weights
    filtered = weights.masked_fill(known, 0)
    return torch.where(filtered.sum(dim=1, keepdim=True) > 0, filtered, weights)


class SceneGraphNegatives:
    """The batch's negatives under its scene graphs. `matches` [B, B] bool: caption i is true of image j (None: the
    data has no scene graphs).

    `exclude`: never draw such a pair (where a row has nothing else, it keeps its weights). `uniform`: that share
    of the negatives drawn uniformly among the allowed ones instead of mined (1: all of them, as
    `hard_negatives` off). Measures `itm_false_neg`, the share of drawn negatives that are in fact matches.
    """

    def __init__(self, matches: Tensor | None, exclude: bool = True, uniform: float = 0.0):
        self.matches, self.exclude, self.uniform = matches, exclude, uniform

    def __call__(self, sim_i2t: Tensor, sim_t2i: Tensor, same: Tensor | None,
                 generator: torch.Generator | None) -> Negatives:
        b, device = sim_i2t.shape[0], sim_i2t.device
        known = self.matches if self.exclude else None  # None too where the data has no scene graphs
        weights = (None, None)
        if self.uniform >= 1.0:
            neg_img, neg_txt = self._uniform(b, same, known, generator, device)
        else:
            w_t2i = without_known(negative_weights(sim_t2i, same), known)
            w_i2t = without_known(negative_weights(sim_i2t, same), None if known is None else known.t())
            weights = (w_i2t, w_t2i)
            neg_img, neg_txt = sample_negatives(w_t2i, generator), sample_negatives(w_i2t, generator)
            if self.uniform > 0:  # keep some easy negatives: the signal a small model learns from
                easy_img, easy_txt = self._uniform(b, same, known, generator, device)
                coin = torch.rand(2, b, generator=generator, device=device) < self.uniform
                neg_img, neg_txt = torch.where(coin[0], easy_img, neg_img), torch.where(coin[1], easy_txt, neg_txt)
        if self.matches is None:
            return Negatives(neg_img, neg_txt, *weights)
        rows = torch.arange(b, device=device)
        false = torch.cat([self.matches[rows, neg_img], self.matches[neg_txt, rows]]).float().mean()
        return Negatives(neg_img, neg_txt, *weights, stats={"itm_false_neg": false})

    @staticmethod
    def _uniform(b: int, same: Tensor | None, known: Tensor | None, generator: torch.Generator | None,
                 device: torch.device) -> tuple[Tensor, Tensor]:
        """(image for each text, text for each image), uniform over the pairs not known to match."""
        if known is None:
            return random_negatives(b, generator, device), random_negatives(b, generator, device)
        flat = torch.zeros(b, b, device=device)
        return (sample_negatives(without_known(negative_weights(flat, same), known), generator),
                sample_negatives(without_known(negative_weights(flat, same), known.t()), generator))
