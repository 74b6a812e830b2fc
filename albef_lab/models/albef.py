"""The ALBEF pre-training model: ViT + BERT (text | fusion) + projections + momentum copies + queues.

`ALBEF.forward` computes the three pre-training losses exactly as the original `model_pretrain.py`
(see ../shared/reference/fixtures/README.md for the step-by-step account it was checked against).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from albef_lab.config import ModelConfig
from albef_lab.models.bert import BertForMaskedLM
from albef_lab.models.vit import VisionTransformer
from albef_lab.objectives.distill import copy_params, momentum_update
from albef_lab.objectives.itc import enqueue, id_targets, identity_targets, itc_loss
from albef_lab.objectives.itm import itm_loss, negative_weights, random_negatives, sample_negatives
from albef_lab.objectives.mlm import MaskDraws, apply_mask, draw_mask, mlm_loss
from albef_lab.train.distributed import all_gather_nograd


@dataclass
class PretrainDraws:
    """Random choices of one pre-training step; any left None is drawn from the generator."""

    neg_image_idx: Tensor | None = None  # [B] hard-negative image for each text
    neg_text_idx: Tensor | None = None  # [B] hard-negative text for each image
    mask: MaskDraws | None = None


class MomentumPairs:
    """Mixin: every child `name` that has a child `name_m` is paired with it for the EMA (the original's
    `model_pairs`, derived from the module's own registration instead of listed by hand)."""

    @property
    def model_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        children = dict(self.named_children())
        return [(m, children[f"{n}_m"]) for n, m in children.items() if f"{n}_m" in children]

    def copy_params(self) -> None:
        copy_params(self.model_pairs)


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen deep copy (ties inside the module are kept)."""
    m = copy.deepcopy(module)
    for p in m.parameters():
        p.requires_grad_(False)
    return m


class ALBEF(MomentumPairs, nn.Module):
    """Pre-training model. `ALBEFRetrieval` (models/tasks.py) shares its ITC and ITM code."""

    text_encoder_cls: type[nn.Module] = BertForMaskedLM
    id_queue = False  # retrieval also queues the image id of every feature

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        v, t = cfg.vision, cfg.text
        if t.encoder_width != v.width:
            raise ValueError(f"text.encoder_width ({t.encoder_width}) must equal vision.width ({v.width})")
        self.temp = nn.Parameter(torch.tensor(float(cfg.temp)))
        self.register_buffer("image_queue", F.normalize(torch.randn(cfg.embed_dim, cfg.queue_size), dim=0))
        self.register_buffer("text_queue", F.normalize(torch.randn(cfg.embed_dim, cfg.queue_size), dim=0))
        if self.id_queue:
            self.register_buffer("idx_queue", torch.full((1, cfg.queue_size), -100, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

        self.visual_encoder = VisionTransformer(v)
        self.text_encoder = self.text_encoder_cls(t)
        self.vision_proj = nn.Linear(v.width, cfg.embed_dim)
        self.text_proj = nn.Linear(t.hidden_size, cfg.embed_dim)
        self.itm_head = nn.Linear(t.hidden_size, 2)

        self.visual_encoder_m = momentum_copy(self.visual_encoder)
        self.vision_proj_m = momentum_copy(self.vision_proj)
        self.text_encoder_m = momentum_copy(self.text_encoder)
        self.text_proj_m = momentum_copy(self.text_proj)
        self.set_grad_checkpointing(cfg.grad_checkpointing)

    @property
    def bert(self) -> nn.Module:
        return getattr(self.text_encoder, "bert", self.text_encoder)

    @property
    def bert_m(self) -> nn.Module:
        return getattr(self.text_encoder_m, "bert", self.text_encoder_m)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for m in (self.visual_encoder, self.bert.encoder):
            m.grad_checkpointing = enable

    # --- the shared pieces of a step ---------------------------------------------------------
    def encode(self, image: Tensor, input_ids: Tensor, attention_mask: Tensor, rec: dict) -> tuple[Tensor, ...]:
        b = image.shape[0]
        if input_ids.shape[0] != b or attention_mask.shape != input_ids.shape:
            raise ValueError(f"batch mismatch: image {tuple(image.shape)}, input_ids {tuple(input_ids.shape)}, "
                             f"attention_mask {tuple(attention_mask.shape)}")
        image_embeds = self.visual_encoder(image)
        image_feat = F.normalize(self.vision_proj(image_embeds[:, 0]), dim=-1)
        text_embeds = self.bert(input_ids, attention_mask, mode="text")
        text_feat = F.normalize(self.text_proj(text_embeds[:, 0]), dim=-1)
        rec.update(image_embeds=image_embeds, image_feat=image_feat, text_embeds=text_embeds, text_feat=text_feat)
        return image_embeds, image_feat, text_embeds, text_feat

    def contrastive(self, image: Tensor, input_ids: Tensor, attention_mask: Tensor, image_feat: Tensor,
                    text_feat: Tensor, alpha: float, idx: Tensor | None, same: Tensor | None, distill: bool,
                    rec: dict) -> tuple[Tensor, Tensor, Tensor]:
        """ITC against momentum features + queues, then the enqueue. Returns (loss, sim_i2t, sim_t2i)."""
        b = image.shape[0]
        with torch.no_grad():
            if self.id_queue:
                idx_all = torch.cat([idx.view(1, -1), self.idx_queue.clone().detach()], dim=1)
                targets = id_targets(idx, idx_all)
                rec.update(idx_all=idx_all)
            else:
                targets = identity_targets(b, b + self.cfg.queue_size, image.device)
                if same is not None:
                    targets[:, :b] = same.float()
                    targets = targets / targets.sum(dim=1, keepdim=True)
            momentum_update(self.model_pairs, self.cfg.momentum)
            image_embeds_m = self.visual_encoder_m(image)
            image_feat_m = F.normalize(self.vision_proj_m(image_embeds_m[:, 0]), dim=-1)
            text_embeds_m = self.bert_m(input_ids, attention_mask, mode="text")
            text_feat_m = F.normalize(self.text_proj_m(text_embeds_m[:, 0]), dim=-1)
            image_feat_all = torch.cat([image_feat_m.t(), self.image_queue.clone().detach()], dim=1)
            text_feat_all = torch.cat([text_feat_m.t(), self.text_queue.clone().detach()], dim=1)
            sim_i2t_m = image_feat_m @ text_feat_all / self.temp
            sim_t2i_m = text_feat_m @ image_feat_all / self.temp
        itc = itc_loss(image_feat, text_feat, image_feat_all, text_feat_all, self.temp, targets,
                       sim_i2t_m if distill else None, sim_t2i_m if distill else None, alpha)
        rec.update(image_embeds_m=image_embeds_m, image_feat_m=image_feat_m, text_embeds_m=text_embeds_m,
                   text_feat_m=text_feat_m, image_feat_all=image_feat_all, text_feat_all=text_feat_all,
                   sim_i2t_m=sim_i2t_m, sim_t2i_m=sim_t2i_m, sim_targets=targets, **itc)
        rec["loss_ita"] = itc["loss"]
        self._dequeue_and_enqueue(image_feat_m, text_feat_m, idx)
        return itc["loss"], itc["sim_i2t"], itc["sim_t2i"]

    def matching(self, image_embeds: Tensor, text_embeds: Tensor, attention_mask: Tensor, sim_i2t: Tensor,
                 sim_t2i: Tensor, same: Tensor | None, draws: PretrainDraws, generator: torch.Generator | None,
                 rec: dict) -> Tensor:
        """ITM on [positives; text + hard-negative image; hard-negative text + image] in one fusion pass."""
        b, device = image_embeds.shape[0], image_embeds.device
        neg_img, neg_txt = draws.neg_image_idx, draws.neg_text_idx
        if self.cfg.hard_negatives:
            w_t2i = negative_weights(sim_t2i, same)
            w_i2t = negative_weights(sim_i2t, same)
            rec.update(weights_i2t=w_i2t, weights_t2i=w_t2i)
            neg_img = sample_negatives(w_t2i, generator) if neg_img is None else neg_img
            neg_txt = sample_negatives(w_i2t, generator) if neg_txt is None else neg_txt
        else:
            neg_img = random_negatives(b, generator, device) if neg_img is None else neg_img
            neg_txt = random_negatives(b, generator, device) if neg_txt is None else neg_txt
        neg_img, neg_txt = neg_img.to(device), neg_txt.to(device)
        text_all = torch.cat([text_embeds, text_embeds, text_embeds[neg_txt]], dim=0)
        atts_all = torch.cat([attention_mask, attention_mask, attention_mask[neg_txt]], dim=0)
        image_all = torch.cat([image_embeds, image_embeds[neg_img], image_embeds], dim=0)
        ones = torch.ones(image_all.shape[:2], dtype=torch.long, device=device)
        fused = self.bert(encoder_embeds=text_all, attention_mask=atts_all, encoder_hidden_states=image_all,
                          encoder_attention_mask=ones, mode="fusion")
        vl_output = self.itm_head(fused[:, 0])
        loss_itm, itm_labels = itm_loss(vl_output, b)
        rec.update(neg_image_idx=neg_img, neg_text_idx=neg_txt, output_pos=fused[:b], output_neg=fused[b:],
                   vl_embeddings=fused[:, 0], vl_output=vl_output, itm_labels=itm_labels, loss_itm=loss_itm)
        return loss_itm

    # --- pre-training step -------------------------------------------------------------------
    def forward(self, image: Tensor, input_ids: Tensor, attention_mask: Tensor, alpha: float = 0.0, *,
                draws: PretrainDraws | None = None, generator: torch.Generator | None = None,
                image_ids: Tensor | None = None, record: dict | None = None) -> dict[str, Tensor]:
        """Returns {'loss', 'loss_ita', 'loss_itm', 'loss_mlm'}; `record` (a dict) receives intermediates.

        `image_ids` [B] (optional) marks captions of the same image: they are then positives for ITC
        and never hard negatives (the original treats them as negatives).
        """
        cfg = self.cfg
        draws = draws or PretrainDraws()
        rec = record if record is not None else {}
        if not cfg.distill:
            alpha = 0.0
        with torch.no_grad():
            self.temp.clamp_(0.001, 0.5)
        rec["temp_used"] = self.temp.detach().clone()
        image_embeds, image_feat, text_embeds, text_feat = self.encode(image, input_ids, attention_mask, rec)
        image_atts = torch.ones(image_embeds.shape[:2], dtype=torch.long, device=image.device)
        same = None if image_ids is None else image_ids.view(-1, 1) == image_ids.view(1, -1)
        zero = image_feat.sum() * 0.0

        if cfg.use_itc:
            loss_ita, sim_i2t, sim_t2i = self.contrastive(image, input_ids, attention_mask, image_feat, text_feat,
                                                          alpha, None, same, True, rec)
        else:
            loss_ita = zero
            sim_i2t = (image_feat @ text_feat.t() / self.temp).detach()
            sim_t2i = sim_i2t.t()

        loss_itm = zero
        if cfg.use_itm:
            loss_itm = self.matching(image_embeds, text_embeds, attention_mask, sim_i2t, sim_t2i, same, draws,
                                     generator, rec)

        loss_mlm = zero
        if cfg.use_mlm:
            mask = draws.mask
            if mask is None:
                mask = draw_mask(input_ids.shape, cfg.mlm_probability, cfg.text.vocab_size, generator,
                                 input_ids.device)
            mlm_ids, labels = apply_mask(input_ids, mask, cfg.text.pad_token_id, cfg.cls_token_id,
                                         cfg.mask_token_id)
            soft_labels = None
            if cfg.distill:
                with torch.no_grad():
                    if cfg.use_itc:
                        image_embeds_m = rec["image_embeds_m"]
                    else:  # the teacher was not refreshed by the ITC branch
                        momentum_update(self.model_pairs, cfg.momentum)
                        image_embeds_m = self.visual_encoder_m(image)
                    logits_m = self.text_encoder_m(mlm_ids, attention_mask, image_embeds_m, image_atts)
                    soft_labels = F.softmax(logits_m, dim=-1)
                rec.update(logits_m=logits_m, soft_labels=soft_labels)
            mlm_logits = self.text_encoder(mlm_ids, attention_mask, image_embeds, image_atts)
            loss_mlm = mlm_loss(mlm_logits, labels, soft_labels, alpha, empty_is_zero=cfg.fix_mlm_nan)
            rec.update(mlm_input_ids=mlm_ids, mlm_labels=labels, mlm_logits=mlm_logits, loss_mlm=loss_mlm)

        return {"loss": loss_ita + loss_itm + loss_mlm, "loss_ita": loss_ita, "loss_itm": loss_itm,
                "loss_mlm": loss_mlm}

    @torch.no_grad()
    def _dequeue_and_enqueue(self, image_feat: Tensor, text_feat: Tensor, idx: Tensor | None = None) -> None:
        image_feats = all_gather_nograd(image_feat)
        text_feats = all_gather_nograd(text_feat)
        ptr = int(self.queue_ptr)
        enqueue(self.image_queue, image_feats, ptr)
        if self.id_queue:
            enqueue(self.idx_queue, all_gather_nograd(idx.view(-1, 1)), ptr)
        self.queue_ptr[0] = enqueue(self.text_queue, text_feats, ptr)
