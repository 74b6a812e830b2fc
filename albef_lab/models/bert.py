"""BERT as ALBEF uses it: one stack split into text layers and fusion layers with cross-attention.

Key names follow `bert-base-uncased` / the original `xbert.py`, so official files load unchanged.
Modes: `text` runs layers [0, fusion_layer) on token ids; `fusion` runs [fusion_layer, N) on given
hidden states with cross-attention to the image; `multi_modal` runs embeddings and all layers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from albef_lab.config import TextConfig
from albef_lab.models.attention import attend, capturing, merge_heads, split_heads

MODES = ("text", "fusion", "multi_modal")


@dataclass
class Shared:
    """Cross-attention over N distinct states (images, questions) shared by B text rows: row b attends
    `states[index[b]]` (None: row b attends states[b]). Each layer computes the keys and values of the N
    states once and gathers them per row, so gradients flow through the shared computation; `cache` (a dict)
    keeps them for a later pass over the same states tensor (ITM, then MLM)."""

    index: Tensor | None = None
    cache: dict | None = None


@dataclass
class Prefix:
    """Self-attention keys/values of an already decoded prefix, per layer (`kv`: module -> (k, v)). A pass with
    `index` None records them; a pass with `index` [B] continues row b after prefix `index[b]`, its tokens at
    the positions that follow (VQA ranking: every candidate answer continues its question's [CLS])."""

    kv: dict = field(default_factory=dict)
    index: Tensor | None = None

    @property
    def length(self) -> int:
        return next(iter(self.kv.values()))[0].shape[2] if self.index is not None and self.kv else 0


def self_attention_mask(mask: Tensor, dtype: torch.dtype, causal: bool = False, prefix: int = 0) -> Tensor:
    """[B, L] padding mask -> additive [B, 1, L or 1, prefix + L] mask with -10000 (as BERT does); the
    `prefix` positions before the tokens (decoded earlier) are visible to every token."""
    if prefix:
        mask = torch.cat([mask.new_ones(mask.shape[0], prefix), mask], dim=1)
    m = mask[:, None, None, :].to(dtype)
    if causal:
        n = mask.shape[1]
        tril = torch.tril(torch.ones(n - prefix, n, dtype=dtype, device=mask.device), diagonal=prefix)
        m = tril[None, None] * m
    return (1.0 - m) * -10000.0


def cross_attention_mask(mask: Tensor, dtype: torch.dtype) -> Tensor:
    """[B, N] mask of the attended states -> additive [B, 1, 1, N] mask with -1e9 (clamped to dtype)."""
    m = (1.0 - mask[:, None, None, :].to(dtype)) * -1e9
    return m.clamp(min=torch.finfo(dtype).min)


class BertEmbeddings(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.register_buffer("position_ids", torch.arange(cfg.max_position_embeddings)[None], persistent=True)
        self.word_embeddings = nn.Embedding(cfg.vocab_size, cfg.hidden_size, padding_idx=cfg.pad_token_id)
        self.position_embeddings = nn.Embedding(cfg.max_position_embeddings, cfg.hidden_size)
        self.token_type_embeddings = nn.Embedding(cfg.type_vocab_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, input_ids: Tensor, offset: int = 0) -> Tensor:
        """`offset`: the position of the first token (a continuation of a decoded prefix)."""
        n = input_ids.shape[1] + offset
        if n > self.position_embeddings.num_embeddings:
            raise ValueError(f"text of {n} tokens is longer than max_position_embeddings "
                             f"{self.position_embeddings.num_embeddings}; truncate it")
        # Token type ids are always 0 in ALBEF: only row 0 of the table is used.
        x = self.word_embeddings(input_ids) + self.token_type_embeddings.weight[0]
        x = x + self.position_embeddings(self.position_ids[:, offset:n])
        return self.dropout(self.LayerNorm(x))


class BertSelfAttention(nn.Module):
    attends = True  # albef_lab.models.attention.capture_attention can record its probabilities

    def __init__(self, cfg: TextConfig, cross: bool):
        super().__init__()
        h = cfg.hidden_size
        if h % cfg.num_attention_heads:
            raise ValueError(f"hidden_size {h} is not a multiple of num_attention_heads {cfg.num_attention_heads}")
        self.num_heads = cfg.num_attention_heads
        kv_width = cfg.encoder_width if cross else h
        self.query = nn.Linear(h, h)
        self.key = nn.Linear(kv_width, h)
        self.value = nn.Linear(kv_width, h)
        self.dropout_p = cfg.attention_probs_dropout_prob

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None, shared: Shared | None = None,
                prefix: Prefix | None = None) -> Tensor:
        q = split_heads(self.query(x), self.num_heads)
        k, v = self.keys_values(context, shared.cache if shared else None)
        if prefix is not None:  # self-attention after a decoded prefix: record its keys/values, or prepend them
            if prefix.index is None:
                prefix.kv[self] = (k, v)
            else:
                pk, pv = prefix.kv[self]
                k = torch.cat([pk.index_select(0, prefix.index), k], dim=2)
                v = torch.cat([pv.index_select(0, prefix.index), v], dim=2)
        if shared is not None and shared.index is not None:
            # index_select, not k[index]: the backward of advanced indexing adds repeated rows in a thread-dependent
            # order on the CPU (runs of one seed drift apart); index_select's backward adds them in a fixed order
            k, v = k.index_select(0, shared.index), v.index_select(0, shared.index)
            if mask is not None and mask.shape[0] > 1:
                mask = mask[shared.index]
        p = self.dropout_p if self.training else 0.0
        return merge_heads(attend(self, q, k, v, mask, p))

    def keys_values(self, context: Tensor, cache: dict | None) -> tuple[Tensor, Tensor]:
        key = (self, id(context))
        if cache is not None and key in cache:
            return cache[key]
        kv = split_heads(self.key(context), self.num_heads), split_heads(self.value(context), self.num_heads)
        if cache is not None:
            cache[key] = kv
        return kv


class BertResidualOutput(nn.Module):
    """dense -> dropout -> LayerNorm(+ residual): BERT's `*.output` blocks."""

    def __init__(self, cfg: TextConfig, in_features: int):
        super().__init__()
        self.dense = nn.Linear(in_features, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)
        self.dropout = nn.Dropout(cfg.hidden_dropout_prob)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        return self.LayerNorm(self.dropout(self.dense(x)) + residual)


class BertAttention(nn.Module):
    def __init__(self, cfg: TextConfig, cross: bool = False):
        super().__init__()
        self.self = BertSelfAttention(cfg, cross)
        self.output = BertResidualOutput(cfg, cfg.hidden_size)

    def forward(self, x: Tensor, context: Tensor, mask: Tensor | None, shared: Shared | None = None,
                prefix: Prefix | None = None) -> Tensor:
        return self.output(self.self(x, context, mask, shared, prefix), x)


class BertIntermediate(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.intermediate_size)

    def forward(self, x: Tensor) -> Tensor:
        return F.gelu(self.dense(x))


class BertLayer(nn.Module):
    """Post-norm layer: self-attention, [cross-attention to image/question states], feed-forward."""

    def __init__(self, cfg: TextConfig, cross: bool):
        super().__init__()
        self.attention = BertAttention(cfg)
        self.has_cross_attention = cross
        if cross:
            self.crossattention = BertAttention(cfg, cross=True)
        self.intermediate = BertIntermediate(cfg)
        self.output = BertResidualOutput(cfg, cfg.intermediate_size)

    def forward(self, x: Tensor, mask: Tensor | None, states: Tensor | None = None,
                states_mask: Tensor | None = None, shared: Shared | None = None, prefix: Prefix | None = None,
                first_only: bool = False) -> Tensor:
        """`first_only`: compute the output at position 0 only (all positions still serve as keys and values)."""
        if first_only and not capturing(self):  # a captured map needs every position
            if mask is not None and mask.shape[2] > 1:
                mask = mask[:, :, :1]
            x = self.attention(x[:, :1], x, mask, prefix=prefix)
        else:
            x = self.attention(x, x, mask, prefix=prefix)
        if self.has_cross_attention:
            if states is None:
                raise ValueError("a fusion layer needs encoder_hidden_states (the image or question states)")
            x = self.crossattention(x, states, states_mask, shared)
        return self.output(self.intermediate(x), x)


class BertEncoder(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.layer = nn.ModuleList(BertLayer(cfg, cross=i >= cfg.fusion_layer)
                                   for i in range(cfg.num_hidden_layers))
        self.grad_checkpointing = False

    def forward(self, x: Tensor, mask: Tensor | None, states: Tensor | list[Tensor] | None,
                states_mask: Tensor | list[Tensor] | None, start: int, end: int,
                shared: Shared | None = None, prefix: Prefix | None = None, first_only: bool = False) -> Tensor:
        fusion = self.cfg.fusion_layer
        if self.grad_checkpointing and shared is not None and shared.cache is not None:
            shared = Shared(shared.index)  # recomputation in the backward pass must not read another pass's cache
        for i in range(start, end):
            s, sm = states, states_mask
            if isinstance(states, list | tuple):  # NLVR2: fusion layers alternate between the images
                j = (i - fusion) % len(states)
                s, sm = states[j], states_mask[j]
            layer, first = self.layer[i], first_only and i == end - 1
            if self.grad_checkpointing and x.requires_grad:
                x = checkpoint(layer, x, mask, s, sm, shared, prefix, first, use_reentrant=False)
            else:
                x = layer(x, mask, s, sm, shared, prefix, first)
        return x


class BertModel(nn.Module):
    """Embeddings + encoder, no pooler. Returns the last hidden states [B, L, hidden]."""

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.cfg = cfg
        self.embeddings = BertEmbeddings(cfg)
        self.encoder = BertEncoder(cfg)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Linear | nn.Embedding):
                nn.init.normal_(m.weight, std=self.cfg.initializer_range)
                if isinstance(m, nn.Linear) and m.bias is not None:
                    nn.init.zeros_(m.bias)
                if isinstance(m, nn.Embedding) and m.padding_idx is not None:
                    with torch.no_grad():
                        m.weight[m.padding_idx].zero_()
            elif isinstance(m, nn.LayerNorm):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)

    def forward(self, input_ids: Tensor | None = None, attention_mask: Tensor | None = None,
                encoder_embeds: Tensor | None = None,
                encoder_hidden_states: Tensor | list[Tensor] | None = None,
                encoder_attention_mask: Tensor | list[Tensor] | None = None,
                mode: str = "multi_modal", causal: bool = False, shared: Shared | None = None,
                prefix: Prefix | None = None, first_only: bool = False) -> Tensor:
        """`shared`: text rows share distinct encoder states (see `Shared`); None = one state per row.
        `prefix`: record, or continue from, a decoded prefix (see `Prefix`). `first_only`: the last layer
        computes position 0 only (for a score read from [CLS]), returning [B, 1, hidden]."""
        if mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
        n_layers, fusion = self.cfg.num_hidden_layers, self.cfg.fusion_layer
        offset = prefix.length if prefix is not None else 0  # positions decoded before these tokens
        if mode == "fusion":
            if encoder_embeds is None:
                raise ValueError("mode 'fusion' takes the text encoder's output as encoder_embeds")
            x = encoder_embeds
        else:
            if input_ids is None:
                raise ValueError(f"mode {mode!r} needs input_ids")
            x = self.embeddings(input_ids, offset)
        if attention_mask is None:
            attention_mask = torch.ones(x.shape[:2], dtype=torch.long, device=x.device)
        mask = self_attention_mask(attention_mask, x.dtype, causal, offset)
        states_mask = None
        if encoder_hidden_states is not None:
            def make(s: Tensor, m: Tensor | None) -> Tensor:
                m = torch.ones(s.shape[:2], dtype=torch.long, device=s.device) if m is None else m
                return cross_attention_mask(m, x.dtype)
            if isinstance(encoder_hidden_states, list | tuple):
                masks = encoder_attention_mask or [None] * len(encoder_hidden_states)
                states_mask = [make(s, m) for s, m in zip(encoder_hidden_states, masks, strict=True)]
            else:
                states_mask = make(encoder_hidden_states, encoder_attention_mask)
        start, end = {"text": (0, fusion), "fusion": (fusion, n_layers), "multi_modal": (0, n_layers)}[mode]
        return self.encoder(x, mask, encoder_hidden_states, states_mask, start, end, shared, prefix, first_only)


class BertPredictionHeadTransform(nn.Module):
    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.dense = nn.Linear(cfg.hidden_size, cfg.hidden_size)
        self.LayerNorm = nn.LayerNorm(cfg.hidden_size, eps=cfg.layer_norm_eps)

    def forward(self, x: Tensor) -> Tensor:
        return self.LayerNorm(F.gelu(self.dense(x)))


class BertLMPredictionHead(nn.Module):
    """Output projection tied to the word embeddings (`decoder.weight` IS the embedding table)."""

    def __init__(self, cfg: TextConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.bias = nn.Parameter(torch.zeros(cfg.vocab_size))
        self.transform = BertPredictionHeadTransform(cfg)
        self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size)
        self.decoder.weight = word_embeddings.weight
        self.decoder.bias = self.bias

    def forward(self, x: Tensor) -> Tensor:
        return self.decoder(self.transform(x))


class BertOnlyMLMHead(nn.Module):
    def __init__(self, cfg: TextConfig, word_embeddings: nn.Embedding):
        super().__init__()
        self.predictions = BertLMPredictionHead(cfg, word_embeddings)

    def forward(self, x: Tensor) -> Tensor:
        return self.predictions(x)


class BertForMaskedLM(nn.Module):
    """BERT + MLM head (pre-training's text encoder). `forward` returns token logits [B, L, vocab]."""

    causal = False

    def __init__(self, cfg: TextConfig):
        super().__init__()
        self.bert = BertModel(cfg)
        self.cls = BertOnlyMLMHead(cfg, self.bert.embeddings.word_embeddings)
        nn.init.normal_(self.cls.predictions.transform.dense.weight, std=cfg.initializer_range)
        nn.init.zeros_(self.cls.predictions.transform.dense.bias)

    def forward(self, input_ids: Tensor, attention_mask: Tensor | None = None,
                encoder_hidden_states: Tensor | list[Tensor] | None = None,
                encoder_attention_mask: Tensor | list[Tensor] | None = None,
                mode: str = "multi_modal", shared: Shared | None = None, prefix: Prefix | None = None,
                positions: Tensor | None = None) -> Tensor:
        """`positions` (bool [B, L]): logits only there, [N, vocab] (the vocabulary head is most of MLM's cost)."""
        h = self.bert(input_ids, attention_mask, encoder_hidden_states=encoder_hidden_states,
                      encoder_attention_mask=encoder_attention_mask, mode=mode, causal=self.causal, shared=shared,
                      prefix=prefix)
        return self.cls(h if positions is None else h[positions])


class BertLMHeadModel(BertForMaskedLM):
    """Causal variant (VQA's answer decoder): same weights and keys, lower-triangular self-attention."""

    causal = True
