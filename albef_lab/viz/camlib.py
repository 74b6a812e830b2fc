"""The standard CAM methods of pytorch-grad-cam on ALBEF's ViT, to compare with the paper's attention Grad-CAM.

The target is the image-text ITC similarity against a fixed text (pytorch-grad-cam's "similarity to concept"
recipe). The CAM layer is the last block's first LayerNorm: the last block's own patch outputs get no gradient
when the score reads only [CLS]. Per-word maps are not possible this way: those stay in `gradcam.py`.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor, nn

METHODS = ("GradCAM", "GradCAM++", "EigenCAM", "ScoreCAM", "AblationCAM")


class SimilarityModel(nn.Module):
    """image [B, 3, R, R] -> [B, 1] cosine similarity with one fixed text feature."""

    def __init__(self, model: nn.Module, text_feat: Tensor):
        super().__init__()
        self.model, self.text_feat = model, text_feat.detach()

    def forward(self, image: Tensor) -> Tensor:
        _, image_feat = self.model.encode_image(image)
        return (image_feat @ self.text_feat.t())[:, :1]


def vit_tokens_to_grid(tokens: Tensor) -> Tensor:
    """[B, 1 + s*s, C] ViT tokens -> [B, C, s, s] (the CLS token dropped), pytorch-grad-cam's reshape_transform."""
    b, n, c = tokens.shape
    side = math.isqrt(n - 1)
    return tokens[:, 1:].reshape(b, side, side, c).permute(0, 3, 1, 2)


def _cam_class(name: str):
    import pytorch_grad_cam as pgc

    classes = {"GradCAM": pgc.GradCAM, "GradCAM++": pgc.GradCAMPlusPlus, "EigenCAM": pgc.EigenCAM,
               "ScoreCAM": pgc.ScoreCAM, "AblationCAM": pgc.AblationCAM}
    if name not in classes:
        raise ValueError(f"unknown CAM method {name!r}; choose from {list(classes)}")
    return classes[name]


def similarity_cams(model: nn.Module, image: Tensor, ids: Tensor, mask: Tensor,
                    methods: tuple[str, ...] = ("GradCAM", "GradCAM++", "EigenCAM", "ScoreCAM"),
                    batch_size: int = 32) -> dict[str, np.ndarray]:
    """{method: [s, s] map in [0, 1] on the patch grid} for one image [1, 3, R, R] and one text."""
    from pytorch_grad_cam.ablation_layer import AblationLayerVit

    with torch.no_grad():
        _, text_feat = model.encode_text(ids, mask)
    wrapper = SimilarityModel(model, text_feat).eval()
    layer = model.visual_encoder.blocks[-1].norm1
    side = image.shape[-1] // model.cfg.vision.patch_size
    out = {}
    for name in methods:
        cls = _cam_class(name)
        kw = {"ablation_layer": AblationLayerVit()} if name == "AblationCAM" else {}
        cam = cls(model=wrapper, target_layers=[layer], reshape_transform=vit_tokens_to_grid, **kw)
        if hasattr(cam, "batch_size"):
            cam.batch_size = batch_size
        grey = cam(input_tensor=image, targets=[lambda output: output[0]])[0]  # [R, R], resized by the library
        grid = torch.nn.functional.adaptive_avg_pool2d(torch.from_numpy(grey)[None, None].float(), side)[0, 0]
        out[name] = grid.numpy()
        cam.activations_and_grads.release()
    return out
