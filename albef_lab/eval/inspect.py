"""Looking inside one pre-training step and at a trained model: what the notebooks draw.

Each function runs the model's own API (`encode_image`, `encode_text`, `itm_logits`) and the objectives'
own sampling, so what is drawn is what training does.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from albef_lab.models.base import eval_mode
from albef_lab.objectives.itm import negative_weights, random_negatives, sample_negatives
from albef_lab.objectives.mlm import apply_mask, draw_mask


@torch.no_grad()
def batch_negatives(model: nn.Module, image: Tensor, ids: Tensor, mask: Tensor,
                    generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """One batch's ITC similarity matrix [B, B] (image rows, text columns; / temp) and the ITM hard negatives
    drawn from it as training draws them: `neg_image` [B] for each text, `neg_text` [B] for each image."""
    with eval_mode(model):
        _, image_feat = model.encode_image(image)
        _, text_feat = model.encode_text(ids, mask)
    sim = image_feat @ text_feat.t() / model.temp
    return {"sim": sim, "neg_image": sample_negatives(negative_weights(sim.t()), generator),
            "neg_text": sample_negatives(negative_weights(sim), generator)}


def mlm_example(ids: Tensor, model: nn.Module, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
    """(masked ids, labels: -100 where the token was not chosen) for a batch of token ids, as MLM masks them."""
    cfg = model.cfg
    draws = draw_mask(ids.shape, cfg.mlm_probability, cfg.text.vocab_size, generator, ids.device)
    return apply_mask(ids, draws, cfg.text.pad_token_id, cfg.cls_token_id, cfg.mask_token_id)


@torch.no_grad()
def itm_scores(model: nn.Module, image: Tensor, ids: Tensor, mask: Tensor,
               generator: torch.Generator | None = None) -> dict[str, Tensor]:
    """ITM match probabilities of a batch of matching pairs: 'positive' (each image with its own text),
    'hard_negative' (with the text ITC ranks most similar among the others, what training mines) and
    'random_negative' (with another text of the batch). Each [B]."""
    with eval_mode(model):
        image_states, image_feat = model.encode_image(image)
        text_states, text_feat = model.encode_text(ids, mask)
        sim = image_feat @ text_feat.t()
        hard = sim.masked_fill(torch.eye(len(sim), dtype=torch.bool, device=sim.device), -torch.inf).argmax(1)
        rand = random_negatives(len(sim), generator, sim.device)

        def prob(text_index: Tensor) -> Tensor:
            logits = model.itm_logits(text_states[text_index], mask[text_index], image_states)
            return logits.softmax(-1)[:, 1]

        return {"positive": prob(torch.arange(len(sim), device=sim.device)), "hard_negative": prob(hard),
                "random_negative": prob(rand)}
