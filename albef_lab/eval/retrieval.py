"""Image-text retrieval evaluation: ITC features, recall@k, and ITM accuracy on held-out pairs."""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import NamedTuple

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from albef_lab.data.tokenizer import Tokenizer
from albef_lab.models.base import eval_mode


def recall_metrics(scores_i2t: Tensor, txt2img: Tensor, ks: tuple[int, ...] = (1, 5, 10),
                   scores_t2i: Tensor | None = None) -> dict[str, float]:
    """Recall@k in percent, as the original's `itm_eval`: an image is right if any of its texts ranks < k.

    `scores_i2t` [images, texts]; `txt2img` [texts] gives each text's image; `scores_t2i` [texts, images]
    ranks images for each text (default: the transpose). Ties count in the query's favour.
    """
    n_img, n_txt = scores_i2t.shape
    txt2img = txt2img.to(scores_i2t.device)
    ranks_i = torch.empty(n_img, dtype=torch.long, device=scores_i2t.device)
    for a in range(0, n_img, 256):
        s = scores_i2t[a:a + 256]
        pos = txt2img[None, :] == torch.arange(a, a + s.shape[0], device=s.device)[:, None]
        best_pos = s.masked_fill(~pos, float("-inf")).max(dim=1, keepdim=True).values
        ranks_i[a:a + 256] = (s > best_pos).sum(dim=1)
    s_t = scores_i2t.t() if scores_t2i is None else scores_t2i
    target = s_t.gather(1, txt2img[:, None])
    ranks_t = (s_t > target).sum(dim=1)
    out = {}
    for k in ks:
        out[f"txt_r{k}"] = 100.0 * (ranks_i < k).float().mean().item()
        out[f"img_r{k}"] = 100.0 * (ranks_t < k).float().mean().item()
    out["txt_r_mean"] = sum(out[f"txt_r{k}"] for k in ks) / len(ks)
    out["img_r_mean"] = sum(out[f"img_r{k}"] for k in ks) / len(ks)
    out["r_mean"] = (out["txt_r_mean"] + out["img_r_mean"]) / 2
    return out


def chance_recall(n_images: int, k: int = 1) -> float:
    """Text->image recall@k of a random ranking, in percent."""
    return 100.0 * min(1.0, k / n_images) if n_images else math.nan


@torch.no_grad()
def encode_texts(model: nn.Module, tokenizer: Tokenizer, texts: list[str], device: torch.device,
                 batch_size: int = 256, max_length: int = 30) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (text-mode states [T, L, D], attention masks [T, L], normalised ITC features [T, E])."""
    states, atts, feats = [], [], []
    ids, mask = tokenizer(texts, max_length=max_length, padding="max_length")
    for a in range(0, len(texts), batch_size):
        i, m = ids[a:a + batch_size].to(device), mask[a:a + batch_size].to(device)
        h, f = model.encode_text(i, m)
        states.append(h)
        atts.append(m)
        feats.append(f)
    return torch.cat(states), torch.cat(atts), torch.cat(feats)


@torch.no_grad()
def encode_images(model: nn.Module, loader: Iterable, device: torch.device) -> tuple[Tensor, Tensor]:
    """Returns (ViT states [N, tokens, D], normalised ITC features [N, E]) in loader order."""
    states, feats = [], []
    for images, *_ in loader:
        h, f = model.encode_image(images.to(device))
        states.append(h)
        feats.append(f)
    return torch.cat(states), torch.cat(feats)


@torch.no_grad()
def itm_margin(model: nn.Module, text_states: Tensor, text_atts: Tensor, image_states: Tensor) -> Tensor:
    """ITM margin (match logit - no-match logit) for aligned rows of texts and images; > 0 means match."""
    logits = model.itm_logits(text_states, text_atts, image_states)
    return logits[:, 1] - logits[:, 0]


def itm_margins(model: nn.Module, text_states: Tensor, text_atts: Tensor, image_states: Tensor,
                batch_size: int = 128) -> Tensor:
    """`itm_margin` of aligned rows, `batch_size` rows at a time."""
    return torch.cat([itm_margin(model, text_states[a:a + batch_size], text_atts[a:a + batch_size],
                                 image_states[a:a + batch_size]) for a in range(0, len(text_states), batch_size)])


def itm_negatives(sims: Tensor, img2txt: dict[int, list[int]], truth: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One negative caption per image for the held-out ITM accuracy: (random, hard) text indices [images].

    random: the first caption of the next image on; hard: the caption of another image most similar to the
    image under ITC. `truth` [images, texts] bool (ShapesWorld's ground truth), when given, rules out every
    caption that is in fact true of the image, so that no 'negative' is a match.
    """
    n_img, n_txt = sims.shape
    own = torch.zeros(n_img, n_txt, dtype=torch.bool, device=sims.device)
    for i, texts in img2txt.items():
        own[i, texts] = True
    ruled_out = own if truth is None else own | truth.to(sims.device)
    if n_img < 2:
        raise ValueError("held-out ITM accuracy needs at least 2 images (a negative comes from another image)")
    first = torch.tensor([img2txt[i][0] for i in range(n_img)], device=sims.device)
    # candidates of image i: the first captions of images i+1, i+2, ... (wrapping); the first that is false of i
    ahead = torch.arange(n_img, device=sims.device)[:, None] + torch.arange(1, n_img, device=sims.device)
    cand = first[ahead % n_img]
    ok = ~ruled_out.gather(1, cand)
    pick = torch.where(ok.any(1), ok.int().argmax(1), n_img - 2)  # none false: the last candidate, as a loop would
    random_neg = cand.gather(1, pick[:, None])[:, 0]
    hard_neg = sims.masked_fill(ruled_out, float("-inf")).argmax(dim=1)
    return random_neg, hard_neg


class EncodedSplit(NamedTuple):
    """A retrieval split through the unimodal encoders: what every retrieval metric starts from."""

    image_states: Tensor  # ViT states [images, tokens, D]
    image_feat: Tensor  # normalised ITC features [images, E]
    text_states: Tensor  # text-mode states [texts, L, D]
    text_atts: Tensor  # [texts, L]
    text_feat: Tensor  # [texts, E]


class StreamedImageStates:
    """Every image's ViT states without holding them: a chunk is encoded again when it is indexed (by a tensor of
    image indices or a slice, like the tensor it stands for). The ViT runs twice; memory holds one chunk."""

    def __init__(self, model: nn.Module, dataset, device: torch.device):
        self.model, self.dataset, self.device = model, dataset, device

    def __len__(self) -> int:
        return len(self.dataset)

    @property
    def shape(self) -> tuple[int]:
        return (len(self),)

    @torch.no_grad()
    def __getitem__(self, index: Tensor | slice) -> Tensor:
        rows = range(len(self))[index] if isinstance(index, slice) else index.reshape(-1).tolist()
        images = torch.stack([self.dataset[i][0] for i in rows]).to(self.device)
        return self.model.encode_image(images)[0]


def encode_split(model: nn.Module, dataset, tokenizer: Tokenizer, device: torch.device, batch_size: int = 128,
                 num_workers: int = 0, stream_images: bool = False) -> EncodedSplit:
    """Every image and caption of a RetrievalEvalDataset, encoded once (in eval mode); `stream_images` keeps
    the images' ITC features only and hands back `StreamedImageStates` for their states."""
    with eval_mode(model):
        loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
        if stream_images:
            image_feat = torch.cat([model.encode_image(images.to(device))[1] for images, *_ in loader])
            image_states = StreamedImageStates(model, dataset, device)
        else:
            image_states, image_feat = encode_images(model, loader, device)
        text_states, text_atts, text_feat = encode_texts(model, tokenizer, dataset.text, device)
    return EncodedSplit(image_states, image_feat, text_states, text_atts, text_feat)


@torch.no_grad()
def zero_shot_eval(model: nn.Module, dataset, tokenizer: Tokenizer, device: torch.device,
                   batch_size: int = 128, num_workers: int = 0, truth: Tensor | None = None,
                   encoded: EncodedSplit | None = None) -> dict[str, float]:
    """ITC retrieval recall@k over the whole split, and ITM accuracy on balanced (image, own caption) vs
    (image, another image's caption) pairs: `itm_acc` with a random negative, `itm_acc_hard` with the most
    ITC-similar one (`itm_negatives`; `truth` keeps captions true of the image out); `itm_pair_hard` /
    `itc_pair_hard`: % of images whose own caption ITM / ITC score above that hard negative. `dataset` is a
    RetrievalEvalDataset; `encoded`: the split already encoded (`encode_split`), to reuse."""
    image_states, image_feat, text_states, text_atts, text_feat = (
        encoded or encode_split(model, dataset, tokenizer, device, batch_size, num_workers))
    with eval_mode(model):
        txt2img = torch.tensor([dataset.txt2img[t] for t in range(len(dataset.text))], device=device)
        sims = image_feat @ text_feat.t()
        out = recall_metrics(sims, txt2img)
        n = image_states.shape[0]
        first = torch.tensor([dataset.img2txt[i][0] for i in range(n)], device=device)
        random_neg, hard_neg = itm_negatives(sims, dataset.img2txt, truth)
        # each image with its own caption (scored once, shared by both accuracies) and the negatives
        margins = {key: itm_margins(model, text_states[t], text_atts[t], image_states, batch_size)
                   for key, t in (("pos", first), ("random", random_neg), ("hard", hard_neg))}
        pos_ok = (margins["pos"] > 0).sum().item()
        for key, neg in (("itm_acc", "random"), ("itm_acc_hard", "hard")):
            out[key] = 100.0 * (pos_ok + (margins[neg] <= 0).sum().item()) / (2 * n)
        # the same hard pairs ranked, no threshold: which of the two captions each score prefers. The hard negative
        # is ITC's own favourite false caption, so ITC's share is low by construction; ITM's above it is what the
        # fused half knows that ITC does not
        rows = torch.arange(n, device=device)
        out["itm_pair_hard"] = 100.0 * (margins["pos"] > margins["hard"]).float().mean().item()
        out["itc_pair_hard"] = 100.0 * (sims[rows, first] > sims[rows, hard_neg]).float().mean().item()
    out["n_images"] = n
    return out


@torch.no_grad()
def rerank_scores(model: nn.Module, image_states: Tensor, image_feat: Tensor, text_states: Tensor,
                  text_atts: Tensor, text_feat: Tensor, k: int, batch_size: int = 32) -> tuple[Tensor, Tensor]:
    """The original's retrieval evaluation: ITC similarities pick each query's top-k candidates, which are
    scored by the raw ITM 'match' logit; every other entry is -100. Returns (score_i2t [images, texts],
    score_t2i [texts, images]).

    Each distinct (image, text) pair of the two directions is fused once, in batches of whole images whose
    cross-attention keys/values are computed once per image (`model.cfg.share_cross_kv`). Batches of 32 pairs:
    each row gathers its image's keys/values, so a larger batch costs memory and buys no speed.
    """
    sims = image_feat @ text_feat.t()
    n_img, n_txt = sims.shape
    kt, ki = min(k, n_txt), min(k, n_img)
    i2t = torch.stack([torch.arange(n_img, device=sims.device).repeat_interleave(kt),
                       row_topk(sims, kt).reshape(-1)], dim=1)  # [pairs, (image, text)]
    t2i = torch.stack([row_topk(sims.t(), ki).reshape(-1),
                       torch.arange(n_txt, device=sims.device).repeat_interleave(ki)], dim=1)
    if model.cfg.share_cross_kv:  # every distinct pair once, keys/values once per image
        pairs, where = torch.unique(torch.cat([i2t, t2i]), dim=0, return_inverse=True)  # by image, then text
        logits = match_logits(model, pairs, image_states, text_states, text_atts, batch_size).to(sims.dtype)
        i2t_logits, t2i_logits = logits[where[:len(i2t)]], logits[where[len(i2t):]]
    else:  # before: each direction on its own, one image per pair
        i2t_logits = match_logits(model, i2t, image_states, text_states, text_atts, batch_size).to(sims.dtype)
        t2i_logits = match_logits(model, t2i, image_states, text_states, text_atts, batch_size).to(sims.dtype)
    del sims  # the two score matrices below are the evaluation's largest tensors (5k x 25k: 0.5 GB each)
    score_i2t = torch.full((n_img, n_txt), -100.0, device=i2t.device, dtype=i2t_logits.dtype)
    score_i2t[i2t[:, 0], i2t[:, 1]] = i2t_logits
    score_t2i = torch.full((n_txt, n_img), -100.0, device=i2t.device, dtype=i2t_logits.dtype)
    score_t2i[t2i[:, 1], t2i[:, 0]] = t2i_logits
    return score_i2t, score_t2i


def row_topk(scores: Tensor, k: int, rows: int = 1024) -> Tensor:
    """Indices of each row's top k, `rows` rows at a time: a transposed view is never copied whole."""
    return torch.cat([scores[a:a + rows].topk(k, dim=1).indices for a in range(0, len(scores), rows)])


def match_logits(model: nn.Module, pairs: Tensor, image_states: Tensor, text_states: Tensor, text_atts: Tensor,
                 batch_size: int = 32, images_per_chunk: int = 32) -> Tensor:
    """ITM 'match' logits of (image, text) `pairs` [P, 2], sorted by image.

    With `model.cfg.share_cross_kv`: the pairs of `images_per_chunk` images at a time, their keys/values computed
    once per image and layer and kept for the chunk; within a chunk, batches of texts of similar length, each
    cut to its longest text (trailing padding is masked out of every attention, so it changes nothing).
    Otherwise the original's way: one image per pair, every text padded to the longest of all.
    """
    if not model.cfg.share_cross_kv:
        if isinstance(image_states, StreamedImageStates):
            raise ValueError("streamed image states need model.share_cross_kv=true (one chunk of images at a time)")
        return torch.cat([model.itm_logits(text_states[b[:, 1]], text_atts[b[:, 1]], image_states[b[:, 0]])[:, 1]
                          for b in pairs.split(batch_size)]) if len(pairs) else image_states.new_zeros(0)
    out = text_states.new_zeros(len(pairs))
    lengths = text_atts.sum(1)
    images, rank = torch.unique(pairs[:, 0], return_inverse=True)  # the distinct images; each pair's among them
    for a in range(0, len(images), images_per_chunk):
        rows = ((rank >= a) & (rank < a + images_per_chunk)).nonzero()[:, 0]
        rows = rows[lengths[pairs[rows, 1]].argsort(stable=True)]  # similar lengths share a batch
        states, cache = image_states[images[a:a + images_per_chunk]], {}
        for r in rows.split(batch_size):
            t = pairs[r, 1]
            n = max(int(lengths[t].max()), 1)
            out[r] = model.itm_logits(text_states[t, :n], text_atts[t, :n], states, image_index=rank[r] - a,
                                      kv_cache=cache)[:, 1].to(out.dtype)
    return out
