"""The ALBEF pre-training model: ViT + BERT (text | fusion) + projections + momentum copies + queues.

The public API every caller uses (retrieval, Grad-CAM, the app, the notebooks):
`encode_image`, `encode_text`, `fusion`, `itm_logits`. `ALBEF.forward` is one pre-training step of
the original `model_pretrain.py`: ITC, then ITM, then MLM (see ../shared/reference/fixtures/README.md
for the step-by-step account it was checked against).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from albef_lab.config import ModelConfig
from albef_lab.distributed import all_gather_nograd
from albef_lab.models.base import MomentumPairs
from albef_lab.models.bert import BertForMaskedLM, Shared
from albef_lab.models.record import is_recording, record
from albef_lab.models.vit import VisionTransformer
from albef_lab.objectives.distill import momentum_update
from albef_lab.objectives.itc import diagonal_targets, enqueue, itc_loss, same_image_targets
from albef_lab.objectives.itm import (
    HardNegatives,
    Negatives,
    NegativeSampler,
    UniformNegatives,
    itm_loss,
    negative_weights,
)
from albef_lab.objectives.mlm import MaskDraws, apply_mask, draw_mask, mlm_loss


@dataclass
class PretrainDraws:
    """Random choices of one pre-training step; any left None is drawn from the generator."""

    neg_image_idx: Tensor | None = None  # [B] hard-negative image for each text
    neg_text_idx: Tensor | None = None  # [B] hard-negative text for each image
    mask: MaskDraws | None = None


def same_image(image_ids: Tensor) -> Tensor:
    """[B, B] bool: True where two captions describe the same image."""
    return image_ids.view(-1, 1) == image_ids.view(1, -1)


class ALBEF(MomentumPairs, nn.Module):
    """Pre-training model. `ALBEFRetrieval` (models/tasks.py) shares its ITC and ITM code."""

    text_encoder_cls: type[nn.Module] = BertForMaskedLM
    queue_image_ids = False  # retrieval also queues the image id of every feature

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        v, t = cfg.vision, cfg.text
        if t.encoder_width != v.width:
            raise ValueError(f"text.encoder_width ({t.encoder_width}) must equal vision.width ({v.width})")
        self.temp = nn.Parameter(torch.tensor(float(cfg.temp)))
        self.register_buffer("image_queue", F.normalize(torch.randn(cfg.embed_dim, cfg.queue_size), dim=0))
        self.register_buffer("text_queue", F.normalize(torch.randn(cfg.embed_dim, cfg.queue_size), dim=0))
        if self.queue_image_ids:  # the original's name for the image-id queue
            self.register_buffer("idx_queue", torch.full((1, cfg.queue_size), -100, dtype=torch.long))
        self.register_buffer("queue_ptr", torch.zeros(1, dtype=torch.long))

        self.visual_encoder = VisionTransformer(v)
        self.text_encoder = self.text_encoder_cls(t)
        self.vision_proj = nn.Linear(v.width, cfg.embed_dim)
        self.text_proj = nn.Linear(t.hidden_size, cfg.embed_dim)
        self.itm_head = nn.Linear(t.hidden_size, 2)

        self.add_momentum_copies("visual_encoder", "vision_proj", "text_encoder", "text_proj")
        self.set_grad_checkpointing(cfg.grad_checkpointing)

    @property
    def bert(self) -> nn.Module:
        """The BERT stack (`text_encoder.bert` in pre-training, `text_encoder` itself in the task models)."""
        return getattr(self.text_encoder, "bert", self.text_encoder)

    @property
    def bert_m(self) -> nn.Module:
        return getattr(self.text_encoder_m, "bert", self.text_encoder_m)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        for m in (self.visual_encoder, self.bert.encoder):
            m.grad_checkpointing = enable

    # --- the public API ----------------------------------------------------------------------
    def encode_image(self, image: Tensor, *, momentum: bool = False) -> tuple[Tensor, Tensor]:
        """(ViT states [B, 1 + patches, D], normalised ITC feature [B, E])."""
        states = self.part("visual_encoder", momentum)(image)
        return states, F.normalize(self.part("vision_proj", momentum)(states[:, 0]), dim=-1)

    def encode_text(self, input_ids: Tensor, attention_mask: Tensor, *,
                    momentum: bool = False) -> tuple[Tensor, Tensor]:
        """(text-mode states [B, L, D], normalised ITC feature [B, E])."""
        states = (self.bert_m if momentum else self.bert)(input_ids, attention_mask, mode="text")
        return states, F.normalize(self.part("text_proj", momentum)(states[:, 0]), dim=-1)

    def fusion(self, text_states: Tensor, text_mask: Tensor, image_states: Tensor, *,
               image_index: Tensor | None = None, kv_cache: dict | None = None, momentum: bool = False,
               first_only: bool = False) -> Tensor:
        """The fusion layers over text-mode states, cross-attending to every image token: [B, L, D].

        `image_index` [B]: text row b attends `image_states[image_index[b]]` (each image's keys and values are
        computed once); None: row b attends image b. `kv_cache`: reuse keys/values across calls on the same
        image states (a dict, filled by the first call). `first_only`: the last layer computes [CLS] only
        ([B, 1, D]; what a score of the fused [CLS] needs).
        """
        bert = self.bert_m if momentum else self.bert
        if image_index is not None and not self.cfg.share_cross_kv:  # the per-pair path, for A/B comparisons
            image_states, image_index = image_states.index_select(0, image_index), None
        shared = Shared(image_index, kv_cache) if self.cfg.share_cross_kv else None
        return bert(encoder_embeds=text_states, attention_mask=text_mask, encoder_hidden_states=image_states,
                    mode="fusion", shared=shared, first_only=first_only)

    def itm_logits(self, text_states: Tensor, text_mask: Tensor, image_states: Tensor, *,
                   image_index: Tensor | None = None, kv_cache: dict | None = None) -> Tensor:
        """[B, 2] logits of {no match, match} for rows of texts and images (`image_index`, `kv_cache` as in
        `fusion`). With `cfg.share_cross_kv` the last fusion layer computes [CLS] only: the score reads nothing
        else."""
        fused = self.fusion(text_states, text_mask, image_states, image_index=image_index, kv_cache=kv_cache,
                            first_only=self.cfg.share_cross_kv)
        return self.itm_head(fused[:, 0])

    # --- pre-training step -------------------------------------------------------------------
    def forward(self, image: Tensor, input_ids: Tensor, attention_mask: Tensor, alpha: float = 0.0, *,
                draws: PretrainDraws | None = None, generator: torch.Generator | None = None,
                image_ids: Tensor | None = None, negatives: NegativeSampler | None = None) -> dict[str, Tensor]:
        """Returns {'loss', 'loss_ita', 'loss_itm', 'loss_mlm'} (loss = their sum, as the paper), plus whatever
        the negative sampler measured.

        `image_ids` [B] (optional) marks captions of the same image: they are then positives for ITC
        and never hard negatives (the original treats them as negatives). `negatives`: who draws ITM's negatives
        (default: `HardNegatives`, or `UniformNegatives` with `cfg.hard_negatives` off).
        """
        cfg = self.cfg
        draws = draws or PretrainDraws()
        alpha = alpha if cfg.distill else 0.0
        with torch.no_grad():
            self.temp.clamp_(0.001, 0.5)
        image_states, image_feat, text_states, text_feat = self.encode_batch(image, input_ids, attention_mask)
        same = None if image_ids is None else same_image(image_ids)
        zero = image_feat.sum() * 0.0

        image_states_m = None  # the teacher's image states, shared by ITC and MLM distillation
        kv_cache = {} if cfg.share_cross_kv else None  # each image's fusion keys/values: ITM and MLM share them
        if cfg.use_itc:
            loss_ita, sim_i2t, sim_t2i, image_states_m = self.itc(image, input_ids, attention_mask, image_feat,
                                                                  text_feat, alpha, same=same)
        else:
            loss_ita = zero
            sim_i2t = (image_feat @ text_feat.t() / self.temp).detach()
            sim_t2i = sim_i2t.t()
        loss_itm, stats = zero, {}
        if cfg.use_itm:
            loss_itm, stats = self.itm(image_states, text_states, attention_mask, sim_i2t, sim_t2i, same=same,
                                       draws=draws, generator=generator, kv_cache=kv_cache, negatives=negatives)
        loss_mlm = zero
        if cfg.use_mlm:
            loss_mlm = self.mlm(image, input_ids, attention_mask, image_states, image_states_m, alpha,
                                draws=draws, generator=generator, kv_cache=kv_cache)
        loss = loss_ita + loss_itm + loss_mlm
        return {"loss": loss, "loss_ita": loss_ita, "loss_itm": loss_itm, "loss_mlm": loss_mlm, **stats}

    def encode_batch(self, image: Tensor, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, ...]:
        """Both encoders on a training batch of pairs: (image states, image feature, text states, text feature)."""
        check_batch(image, input_ids, attention_mask)
        record(temp_used=self.temp.detach().clone())
        image_states, image_feat = self.encode_image(image)
        text_states, text_feat = self.encode_text(input_ids, attention_mask)
        record(image_embeds=image_states, image_feat=image_feat, text_embeds=text_states, text_feat=text_feat)
        return image_states, image_feat, text_states, text_feat

    def itc(self, image: Tensor, input_ids: Tensor, attention_mask: Tensor, image_feat: Tensor, text_feat: Tensor,
            alpha: float, *, same: Tensor | None = None, image_ids: Tensor | None = None,
            distill: bool = True) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """ITC against momentum features + queues, then the enqueue.

        Returns (loss, sim_i2t, sim_t2i, the momentum model's image states).
        """
        b = image.shape[0]
        with torch.no_grad():
            targets = self.itc_targets(b, image.device, same=same, image_ids=image_ids)
            momentum_update(self.model_pairs, self.cfg.momentum)
            image_states_m, image_feat_m = self.encode_image(image, momentum=True)
            text_states_m, text_feat_m = self.encode_text(input_ids, attention_mask, momentum=True)
            image_feat_all = torch.cat([image_feat_m.t(), self.image_queue], dim=1)  # cat copies: no clone needed
            text_feat_all = torch.cat([text_feat_m.t(), self.text_queue], dim=1)
            sim_i2t_m = image_feat_m @ text_feat_all / self.temp
            sim_t2i_m = text_feat_m @ image_feat_all / self.temp
        itc = itc_loss(image_feat, text_feat, image_feat_all, text_feat_all, self.temp, targets,
                       sim_i2t_m if distill else None, sim_t2i_m if distill else None, alpha)
        record(image_embeds_m=image_states_m, image_feat_m=image_feat_m, text_embeds_m=text_states_m,
               text_feat_m=text_feat_m, image_feat_all=image_feat_all, text_feat_all=text_feat_all,
               sim_i2t_m=sim_i2t_m, sim_t2i_m=sim_t2i_m, sim_targets=targets, loss_ita=itc["loss"], **itc)
        self._dequeue_and_enqueue(image_feat_m, text_feat_m, image_ids)
        return itc["loss"], itc["sim_i2t"], itc["sim_t2i"], image_states_m

    def itc_targets(self, batch: int, device: torch.device, *, same: Tensor | None = None,
                    image_ids: Tensor | None = None) -> Tensor:
        """[B, B + queue] ITC targets: the diagonal, or every column of the same image."""
        if self.queue_image_ids:
            image_ids_all = torch.cat([image_ids.view(1, -1), self.idx_queue], dim=1)
            record(idx_all=image_ids_all)
            return same_image_targets(image_ids, image_ids_all)
        targets = diagonal_targets(batch, batch + self.cfg.queue_size, device)
        if same is not None:
            targets[:, :batch] = same.float()
            targets = targets / targets.sum(dim=1, keepdim=True)
        return targets

    def itm(self, image_states: Tensor, text_states: Tensor, attention_mask: Tensor, sim_i2t: Tensor,
            sim_t2i: Tensor, *, same: Tensor | None = None, draws: PretrainDraws | None = None,
            generator: torch.Generator | None = None, kv_cache: dict | None = None,
            negatives: NegativeSampler | None = None) -> tuple[Tensor, dict[str, Tensor]]:
        """ITM on [positives; text + negative image; negative text + image] in one fusion pass.

        Returns (loss, what the negative sampler measured)."""
        b, device = image_states.shape[0], image_states.device
        neg = self.draw_negatives(negatives, sim_i2t, sim_t2i, same, generator, draws or PretrainDraws())
        neg_img, neg_txt = neg.image.to(device), neg.text.to(device)
        rows = torch.arange(b, device=device)
        text_all = torch.cat([text_states, text_states, text_states.index_select(0, neg_txt)], dim=0)
        atts_all = torch.cat([attention_mask, attention_mask, attention_mask[neg_txt]], dim=0)
        image_index = torch.cat([rows, neg_img, rows])  # each row's image: the batch images, gathered
        # the loss reads [CLS] only: the last layer computes nothing else (unless recording for a comparison)
        first_only = self.cfg.share_cross_kv and not is_recording()
        fused = self.fusion(text_all, atts_all, image_states, image_index=image_index, kv_cache=kv_cache,
                            first_only=first_only)
        vl_output = self.itm_head(fused[:, 0])
        loss_itm, itm_labels = itm_loss(vl_output, b)
        record(neg_image_idx=neg_img, neg_text_idx=neg_txt, output_pos=fused[:b], output_neg=fused[b:],
               vl_embeddings=fused[:, 0], vl_output=vl_output, itm_labels=itm_labels, loss_itm=loss_itm)
        return loss_itm, dict(neg.stats or {})

    def draw_negatives(self, sampler: NegativeSampler | None, sim_i2t: Tensor, sim_t2i: Tensor, same: Tensor | None,
                       generator: torch.Generator | None, draws: PretrainDraws) -> Negatives:
        """The sampler's negatives (default: the paper's hard ones, or uniform with `cfg.hard_negatives` off); the
        indices `draws` gives are kept (a recorded step replayed)."""
        if draws.neg_image_idx is not None and draws.neg_text_idx is not None:
            if self.cfg.hard_negatives and is_recording():  # the weights the recorded draw was made from
                record(weights_i2t=negative_weights(sim_i2t, same), weights_t2i=negative_weights(sim_t2i, same))
            return Negatives(draws.neg_image_idx, draws.neg_text_idx)
        sampler = sampler or (HardNegatives() if self.cfg.hard_negatives else UniformNegatives())
        neg = sampler(sim_i2t, sim_t2i, same, generator)
        if neg.weights_i2t is not None:
            record(weights_i2t=neg.weights_i2t, weights_t2i=neg.weights_t2i)
        return neg._replace(image=neg.image if draws.neg_image_idx is None else draws.neg_image_idx,
                            text=neg.text if draws.neg_text_idx is None else draws.neg_text_idx)

    def mlm(self, image: Tensor, input_ids: Tensor, attention_mask: Tensor, image_states: Tensor,
            image_states_m: Tensor | None, alpha: float, *, draws: PretrainDraws | None = None,
            generator: torch.Generator | None = None, kv_cache: dict | None = None) -> Tensor:
        """Masked language modelling conditioned on the image, distilled from the momentum model."""
        cfg = self.cfg
        mask = (draws.mask if draws else None) or draw_mask(input_ids.shape, cfg.mlm_probability,
                                                           cfg.text.vocab_size, generator, input_ids.device)
        mlm_ids, labels = apply_mask(input_ids, mask, cfg.text.pad_token_id, cfg.cls_token_id, cfg.mask_token_id)
        # the loss reads masked positions only; the reference comparison records every position's logits
        at = labels != -100 if cfg.mlm_masked_only and not is_recording() else None
        soft_labels = None
        if cfg.distill and cfg.distill_mlm:
            with torch.no_grad():
                if image_states_m is None:  # the teacher was not refreshed by the ITC branch
                    momentum_update(self.model_pairs, cfg.momentum)
                    image_states_m = self.visual_encoder_m(image)
                logits_m = self.text_encoder_m(mlm_ids, attention_mask, image_states_m, positions=at)
                soft_labels = F.softmax(logits_m, dim=-1)
            record(logits_m=logits_m, soft_labels=soft_labels)
        shared = Shared(None, kv_cache) if kv_cache is not None else None
        mlm_logits = self.text_encoder(mlm_ids, attention_mask, image_states, shared=shared, positions=at)
        loss = mlm_loss(mlm_logits, labels if at is None else labels[at], soft_labels, alpha,
                        empty_is_zero=cfg.fix_mlm_nan)
        record(mlm_input_ids=mlm_ids, mlm_labels=labels, mlm_logits=mlm_logits, loss_mlm=loss)
        return loss

    @torch.no_grad()
    def _dequeue_and_enqueue(self, image_feat: Tensor, text_feat: Tensor, image_ids: Tensor | None = None) -> None:
        image_feats = all_gather_nograd(image_feat)
        text_feats = all_gather_nograd(text_feat)
        ptr = int(self.queue_ptr)
        enqueue(self.image_queue, image_feats, ptr)
        if self.queue_image_ids:
            enqueue(self.idx_queue, all_gather_nograd(image_ids.view(-1, 1)), ptr)
        self.queue_ptr[0] = enqueue(self.text_queue, text_feats, ptr)


def check_batch(image: Tensor, input_ids: Tensor, attention_mask: Tensor) -> None:
    if input_ids.shape[0] != image.shape[0] or attention_mask.shape != input_ids.shape:
        raise ValueError(f"batch mismatch: image {tuple(image.shape)}, input_ids {tuple(input_ids.shape)}, "
                         f"attention_mask {tuple(attention_mask.shape)}")
