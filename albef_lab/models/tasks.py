"""The downstream models of the paper, with the original's state-dict layout.

Retrieval (and grounding) reuse the pre-training model's ITC/ITM code; VQA adds a causal answer
decoder; NLVR2 doubles the fusion layers to look at two images in turn; SNLI-VE classifies the fused
[CLS]; the NLVR2 "text assignment" pre-training tells which image pair a text belongs to.
"""

from __future__ import annotations

import copy
import dataclasses
import functools

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from albef_lab.config import ModelConfig, TextConfig
from albef_lab.models.albef import ALBEF, PretrainDraws, same_image
from albef_lab.models.base import MomentumPairs
from albef_lab.models.bert import BertLMHeadModel, BertModel, Prefix, Shared
from albef_lab.models.record import is_recording, record
from albef_lab.models.vit import VisionTransformer
from albef_lab.objectives.distill import momentum_update, soft_cross_entropy
from albef_lab.objectives.itm import NegativeSampler
from albef_lab.objectives.lm import answer_nll, token_nll


class ALBEFRetrieval(ALBEF):
    """ITC (every caption of an image is a positive, via the image-id queue) + ITM with hard negatives."""

    text_encoder_cls = BertModel
    queue_image_ids = True

    def forward(self, image: Tensor, input_ids: Tensor, attention_mask: Tensor, alpha: float = 0.0, *,
                image_ids: Tensor, draws: PretrainDraws | None = None, generator: torch.Generator | None = None,
                negatives: NegativeSampler | None = None) -> dict[str, Tensor]:
        """One fine-tuning step; `image_ids` [B] say which image each caption describes; `negatives` draws ITM's
        negatives (default: as pre-training's, `model.hard_negatives`).

        No temperature clamp (as the original).
        """
        image_states, image_feat, text_states, text_feat = self.encode_batch(image, input_ids, attention_mask)
        image_ids = image_ids.view(-1).to(image.device)
        same = same_image(image_ids)
        loss_ita, sim_i2t, sim_t2i, _ = self.itc(image, input_ids, attention_mask, image_feat, text_feat, alpha,
                                                 image_ids=image_ids, distill=self.cfg.distill)
        record(mask=same)
        loss_itm, _ = self.itm(image_states, text_states, attention_mask, sim_i2t, sim_t2i, same=same, draws=draws,
                               generator=generator, negatives=negatives)
        return {"loss": loss_ita + loss_itm, "loss_ita": loss_ita, "loss_itm": loss_itm}


def decoder_config(text: TextConfig, layers: int = 6) -> TextConfig:
    """The VQA answer decoder: same widths, `layers` causal layers, each cross-attending to the question."""
    return dataclasses.replace(text, num_hidden_layers=layers, fusion_layer=0, encoder_width=text.hidden_size)


class ALBEFVQA(MomentumPairs, nn.Module):
    """Question encoder (text + fusion over the image) and a causal answer decoder over the question states."""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.visual_encoder = VisionTransformer(cfg.vision)
        self.text_encoder = BertModel(cfg.text)
        self.text_decoder = BertLMHeadModel(decoder_config(cfg.text, cfg.decoder_layers))
        if cfg.distill:
            self.add_momentum_copies("visual_encoder", "text_encoder", "text_decoder")

    def encode_question(self, image: Tensor, q_ids: Tensor, q_mask: Tensor, *, momentum: bool = False) -> Tensor:
        """The question fused with the image (all 12 layers, multimodal mode): [B, L, D]."""
        image_states = self.part("visual_encoder", momentum)(image)
        return self.part("text_encoder", momentum)(q_ids, q_mask, encoder_hidden_states=image_states)

    def forward(self, image: Tensor, q_ids: Tensor, q_mask: Tensor, a_ids: Tensor, a_mask: Tensor,
                answers_per_question: list[int] | Tensor, weights: Tensor, alpha: float = 0.0) -> Tensor:
        """Training loss: weighted, summed answer NLL divided by the number of questions."""
        pad = self.cfg.text.pad_token_id
        n = torch.as_tensor(answers_per_question, device=image.device)
        if int(n.sum()) != a_ids.shape[0] or weights.shape[0] != a_ids.shape[0]:
            raise ValueError(f"answers ({a_ids.shape[0]}), weights ({weights.shape[0]}) and the sum of "
                             f"answers_per_question ({int(n.sum())}) must agree")
        targets = a_ids.masked_fill(a_ids == pad, -100)
        question_output = self.encode_question(image, q_ids, q_mask)
        index = torch.arange(image.shape[0], device=image.device).repeat_interleave(n)  # each answer's question
        if is_recording():
            record(answer_targets=targets, question_output=question_output, question_states=question_output[index],
                   question_atts=q_mask[index])
        soft = None
        if self.cfg.distill:
            with torch.no_grad():
                momentum_update(self.model_pairs, self.cfg.momentum)
                output_m = self.encode_question(image, q_ids, q_mask, momentum=True)
                logits_m = self.decode(self.text_decoder_m, a_ids, a_mask, output_m, q_mask, index)[:, :-1]
                soft = F.softmax(logits_m, dim=-1)
            if is_recording():
                record(question_states_m=output_m[index], logits_m=logits_m, soft_labels=soft)
        logits = self.decode(self.text_decoder, a_ids, a_mask, question_output, q_mask, index)
        answer_loss = answer_nll(logits, targets, soft, alpha)
        record(decoder_logits=logits, answer_loss=answer_loss)
        return (weights.to(answer_loss.dtype) * answer_loss).sum() / image.shape[0]

    def decode(self, decoder: nn.Module, a_ids: Tensor, a_mask: Tensor | None, states: Tensor, q_mask: Tensor,
               index: Tensor, head: bool = True) -> Tensor:
        """Answer-token logits (or, `head=False`, the decoder's last hidden states); answer row r cross-attends to
        question `index[r]` (keys/values once per question)."""
        run = decoder if head else functools.partial(decoder.bert, causal=True)
        if self.cfg.share_cross_kv:
            return run(a_ids, a_mask, encoder_hidden_states=states, encoder_attention_mask=q_mask,
                       shared=Shared(index))
        return run(a_ids, a_mask, encoder_hidden_states=states.index_select(0, index),
                   encoder_attention_mask=q_mask[index])

    @torch.no_grad()
    def rank_answers(self, image: Tensor, q_ids: Tensor, q_mask: Tensor, answer_ids: Tensor, answer_mask: Tensor,
                     k: int, *, fix_double_count: bool = False) -> tuple[Tensor, Tensor]:
        """The k best answers of a fixed list: top-k by first-token probability, rescored by sequence likelihood.

        The original adds log P(first token) twice; `fix_double_count=True` counts it once.
        Returns (answer indices [B, k], probabilities [B, k]) best first.
        """
        states = self.encode_question(image, q_ids, q_mask)
        return self.rank_from_states(states, q_mask, answer_ids, answer_mask, k, fix_double_count=fix_double_count)

    @torch.no_grad()
    def rank_from_states(self, states: Tensor, q_mask: Tensor, answer_ids: Tensor, answer_mask: Tensor, k: int, *,
                         fix_double_count: bool = False) -> tuple[Tensor, Tensor]:
        """`rank_answers` from the fused question states [B, L, D] (to rank against several answer lists)."""
        k = min(k, answer_ids.shape[0])
        b = states.shape[0]
        start = answer_ids[0, 0].repeat(b, 1)
        prefix = Prefix() if self.cfg.share_cross_kv else None  # keeps each question's decoded [CLS]
        start_logits = self.text_decoder(start, None, states, q_mask, prefix=prefix)[:, 0]
        first = answer_ids[:, 1]
        prob_first = F.softmax(start_logits, dim=1).index_select(1, first)
        topk_probs, topk_ids = prob_first.topk(k, dim=1)
        cand_ids = answer_ids[topk_ids.view(-1)]
        cand_mask = answer_mask[topk_ids.view(-1)]
        targets = cand_ids.masked_fill(cand_ids == self.cfg.text.pad_token_id, -100)
        index = torch.arange(b, device=states.device).repeat_interleave(k)  # each candidate's question
        if prefix is not None and bool((cand_ids[:, 0] == start[0, 0]).all()):
            # each candidate continues its question's [CLS]: the first token's NLL is known from the start pass,
            # the decoder runs on the tokens that predict another (keys/values once per question)
            n = int(cand_mask.sum(1).max())
            rest = torch.zeros(len(cand_ids), dtype=states.dtype, device=states.device)
            if n > 2:  # some candidate has a token after the first that predicts another
                hidden = self.text_decoder.bert(cand_ids[:, 1:n - 1], cand_mask[:, 1:n - 1],
                                                encoder_hidden_states=states, encoder_attention_mask=q_mask,
                                                causal=True, shared=Shared(index), prefix=Prefix(prefix.kv, index))
                rest = token_nll(self.text_decoder.cls, hidden, targets[:, 2:n])
            first_nll = -F.log_softmax(start_logits, dim=1)[index, cand_ids[:, 1]]
            nll = (first_nll + rest).view(-1, 1)
        else:  # before: every candidate decoded from [CLS], logits at every position
            hidden = self.decode(self.text_decoder, cand_ids, cand_mask, states, q_mask, index, head=False)
            nll = answer_nll(self.text_decoder.cls(hidden), targets).view(-1, 1)
        first_term = torch.zeros_like(nll) if fix_double_count else topk_probs.reshape(-1, 1).log()
        log_probs = torch.cat([first_term, -nll], dim=1)
        log_probs_sum = log_probs.sum(1).view(b, k)
        probs, rerank = F.softmax(log_probs_sum, dim=-1).topk(k, dim=1)
        if is_recording():  # the full candidate logits, for comparison with the original's
            full = self.decode(self.text_decoder, cand_ids, cand_mask, states, q_mask, index)
            record(question_states=states[index], question_atts=q_mask[index], cand_decoder_logits=full)
        record(start_logits=start_logits,
               prob_first_token=prob_first, first_topk_probs=topk_probs, first_topk_ids=topk_ids,
               cand_input_ids=cand_ids, cand_targets_ids=targets,
               answer_loss=nll, log_probs=log_probs, log_probs_sum=log_probs_sum, rerank_id=rerank)
        return topk_ids.gather(1, rerank), probs


def share_cross_attention(bert: BertModel) -> None:
    """NLVR2: fusion layers f+2i and f+2i+1 share the cross-attention key and value (weights and biases)."""
    layers, fusion = bert.encoder.layer, bert.cfg.fusion_layer
    for i in range(fusion, len(layers) - 1, 2):
        a, b = layers[i].crossattention.self, layers[i + 1].crossattention.self
        b.key, b.value = a.key, a.value


def nlvr_text_config(text: TextConfig) -> TextConfig:
    """Each fusion layer of the pre-trained model becomes two (one per image), as the original does."""
    return dataclasses.replace(text, num_hidden_layers=text.fusion_layer + 2 * (text.num_hidden_layers -
                                                                                 text.fusion_layer))


class ALBEFClassifier(MomentumPairs, nn.Module):
    """Fused [CLS] -> Linear-ReLU-Linear. SNLI-VE: one image, 3 classes; NLVR2: an image pair, 2 classes."""

    def __init__(self, cfg: ModelConfig, num_classes: int, pair: bool):
        super().__init__()
        self.cfg, self.pair = cfg, pair
        self.visual_encoder = VisionTransformer(cfg.vision)
        self.text_encoder = BertModel(cfg.text)
        if pair:
            share_cross_attention(self.text_encoder)
        h = cfg.text.hidden_size
        self.cls_head = nn.Sequential(nn.Linear(h, h), nn.ReLU(), nn.Linear(h, num_classes))
        if cfg.distill:
            self.add_momentum_copies("visual_encoder", "text_encoder", "cls_head")

    def logits(self, images: Tensor, ids: Tensor, mask: Tensor, *, momentum: bool = False) -> Tensor:
        """Class logits [B, classes] of the fused [CLS]."""
        image_embeds = self.part("visual_encoder", momentum)(images)
        states = image_embeds
        if self.pair:  # images = [left (B); right (B)]
            b = ids.shape[0]
            if image_embeds.shape[0] != 2 * b:
                raise ValueError(f"NLVR2 takes 2B images (left then right) for B texts: {images.shape[0]} vs {b}")
            states = [image_embeds[:b], image_embeds[b:]]
        fused = self.part("text_encoder", momentum)(ids, mask, encoder_hidden_states=states)
        suffix = "_m" if momentum else ""
        record(**{f"image_embeds{suffix}": image_embeds, f"fused_output{suffix}": fused})
        return self.part("cls_head", momentum)(fused[:, 0])

    def forward(self, images: Tensor, ids: Tensor, mask: Tensor, targets: Tensor, alpha: float = 0.0) -> Tensor:
        """The training loss, distilled from the momentum model when `cfg.distill`."""
        prediction = self.logits(images, ids, mask)
        record(prediction=prediction)
        loss = F.cross_entropy(prediction, targets)
        if self.cfg.distill:
            with torch.no_grad():
                momentum_update(self.model_pairs, self.cfg.momentum)
                prediction_m = self.logits(images, ids, mask, momentum=True)
            record(prediction_m=prediction_m)
            distill = soft_cross_entropy(prediction, F.softmax(prediction_m, dim=-1)).mean()
            loss = (1 - alpha) * loss + alpha * distill
        return loss


class ALBEFVE(ALBEFClassifier):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, num_classes=3, pair=False)


class ALBEFNLVR(ALBEFClassifier):
    def __init__(self, cfg: ModelConfig):
        super().__init__(cfg, num_classes=2, pair=True)


class RandomSource:
    """The draws a model makes (`rand`, `multinomial`), from a generator or replayed from a recording."""

    def __init__(self, generator: torch.Generator | None = None, log: list[dict] | None = None):
        self.generator, self.log = generator, list(log) if log is not None else None

    def _replay(self, fn: str) -> Tensor:
        entry = self.log.pop(0)
        if entry["fn"] != fn:
            raise ValueError(f"recorded draw is {entry['fn']!r} but the model asks for {fn!r}")
        return entry["result"]

    def rand(self, n: int, device: torch.device) -> Tensor:
        if self.log is not None:
            return self._replay("rand").to(device)
        return torch.rand(n, generator=self.generator, device=device)

    def multinomial(self, weights: Tensor, n: int) -> Tensor:
        if self.log is not None:
            return self._replay("multinomial").to(weights.device)
        return torch.multinomial(weights, n, generator=self.generator)


class ALBEFPretrainNLVR(nn.Module):
    """Text assignment: is a caption about the left image (0), the right (1), or neither (2)?"""

    def __init__(self, cfg: ModelConfig):
        super().__init__()
        self.cfg = cfg
        self.temp = nn.Parameter(torch.tensor(float(cfg.temp)))  # unused, kept for the checkpoint layout
        self.visual_encoder = VisionTransformer(cfg.vision)
        self.text_encoder = BertModel(cfg.text)
        share_cross_attention(self.text_encoder)
        self.vision_proj = nn.Linear(cfg.vision.width, cfg.embed_dim)
        self.text_proj = nn.Linear(cfg.text.hidden_size, cfg.embed_dim)  # unused, as in the original
        self.ta_head = nn.Linear(cfg.text.hidden_size, 3)

    def assignment_logits(self, image: Tensor, ids: Tensor, mask: Tensor,
                          source: RandomSource | None = None) -> tuple[Tensor, Tensor]:
        """Draw an image pair for each caption (the original's rule) -> (logits [B, 3], labels [B])."""
        source = source or RandomSource()
        device = image.device
        image_embeds = self.visual_encoder(image)
        with torch.no_grad():
            image_feat = F.normalize(self.vision_proj(image_embeds[:, 0]), dim=-1)
            sim = image_feat @ image_feat.t() / 0.07
            weights = F.softmax(sim, dim=1)
            weights.fill_diagonal_(0)
        left, right, labels = draw_pairs(weights, source)
        # index_select: its backward adds an image's repeated rows in a fixed order (see models/bert.py)
        img0, img1 = image_embeds.index_select(0, left.to(device)), image_embeds.index_select(0, right.to(device))
        labels = labels.to(device)
        fused = self.text_encoder(ids, mask, encoder_hidden_states=[img0, img1])
        pred = self.ta_head(fused[:, 0])
        record(image_embeds=image_embeds, image_feat=image_feat, sim=sim, weights=weights,
               image_inputs_0=img0, image_inputs_1=img1, labels=labels, fused_output=fused, pred=pred)
        return pred, labels

    def forward(self, image: Tensor, ids: Tensor, mask: Tensor, source: RandomSource | None = None) -> Tensor:
        pred, labels = self.assignment_logits(image, ids, mask, source)
        return F.cross_entropy(pred, labels)


def draw_pairs(weights: Tensor, source: RandomSource) -> tuple[Tensor, Tensor, Tensor]:
    """For caption i: (i, j) label 0, (j, i) label 1, or two other images label 2, j ~ weights[i]."""
    left, right, labels = [], [], []
    device = weights.device
    for i in range(weights.shape[0]):
        if source.rand(1, device).item() > 1 / 3:
            j = int(source.multinomial(weights[i], 1).item())
            if source.rand(1, device).item() > 0.5:
                pair, label = (i, j), 0
            else:
                pair, label = (j, i), 1
        else:
            pair, label = tuple(source.multinomial(weights[i], 2).tolist()), 2
        left.append(pair[0])
        right.append(pair[1])
        labels.append(label)
    return torch.tensor(left), torch.tensor(right), torch.tensor(labels)


def with_nlvr_layers(cfg: ModelConfig) -> ModelConfig:
    out = copy.deepcopy(cfg)
    out.text = nlvr_text_config(cfg.text)
    return out
