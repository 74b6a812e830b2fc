"""Image-text retrieval evaluation: ITC features, recall@k, and ITM accuracy on held-out pairs."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader

from albef_lab.data.tokenizer import Tokenizer


def text_bert(model: nn.Module) -> nn.Module:
    """The BERT stack of a pre-training model (`text_encoder.bert`) or of a task model (`text_encoder`)."""
    enc = model.text_encoder
    return enc.bert if hasattr(enc, "bert") else enc


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


@torch.no_grad()
def encode_texts(model: nn.Module, tokenizer: Tokenizer, texts: list[str], device: torch.device,
                 batch_size: int = 256, max_length: int = 30) -> tuple[Tensor, Tensor, Tensor]:
    """Returns (text-mode states [T, L, D], attention masks [T, L], normalised ITC features [T, E])."""
    bert = text_bert(model)
    embeds, atts, feats = [], [], []
    ids, mask = tokenizer(texts, max_length=max_length, padding="max_length")
    for a in range(0, len(texts), batch_size):
        i, m = ids[a:a + batch_size].to(device), mask[a:a + batch_size].to(device)
        h = bert(i, m, mode="text")
        embeds.append(h)
        atts.append(m)
        feats.append(F.normalize(model.text_proj(h[:, 0]), dim=-1))
    return torch.cat(embeds), torch.cat(atts), torch.cat(feats)


@torch.no_grad()
def encode_images(model: nn.Module, loader: DataLoader, device: torch.device) -> tuple[Tensor, Tensor]:
    """Returns (ViT states [N, tokens, D], normalised ITC features [N, E]) in loader order."""
    states, feats = [], []
    for images, *_ in loader:
        h = model.visual_encoder(images.to(device))
        states.append(h)
        feats.append(F.normalize(model.vision_proj(h[:, 0]), dim=-1))
    return torch.cat(states), torch.cat(feats)


@torch.no_grad()
def itm_scores(model: nn.Module, text_states: Tensor, text_atts: Tensor, image_states: Tensor) -> Tensor:
    """ITM margin (match logit - no-match logit) for aligned rows of texts and images; > 0 means match."""
    bert = text_bert(model)
    ones = torch.ones(image_states.shape[:2], dtype=torch.long, device=image_states.device)
    fused = bert(encoder_embeds=text_states, attention_mask=text_atts, encoder_hidden_states=image_states,
                 encoder_attention_mask=ones, mode="fusion")
    logits = model.itm_head(fused[:, 0])
    return logits[:, 1] - logits[:, 0]


@torch.no_grad()
def zero_shot_eval(model: nn.Module, dataset, tokenizer: Tokenizer, device: torch.device,
                   batch_size: int = 128, num_workers: int = 0) -> dict[str, float]:
    """ITC retrieval recall@k over the whole split, and ITM accuracy on (image, own caption) vs
    (image, caption of the next image) pairs. `dataset` is a RetrievalEvalDataset."""
    was_training = model.training
    model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, num_workers=num_workers)
    image_states, image_feat = encode_images(model, loader, device)
    text_states, text_atts, text_feat = encode_texts(model, tokenizer, dataset.text, device)
    txt2img = torch.tensor([dataset.txt2img[t] for t in range(len(dataset.text))], device=device)
    out = recall_metrics(image_feat @ text_feat.t(), txt2img)
    n = image_states.shape[0]
    first = torch.tensor([dataset.img2txt[i][0] for i in range(n)], device=device)
    neg = first[(torch.arange(n, device=device) + 1) % n]
    correct = 0
    for a in range(0, n, batch_size):
        img = image_states[a:a + batch_size]
        pos_s = itm_scores(model, text_states[first[a:a + batch_size]], text_atts[first[a:a + batch_size]], img)
        neg_s = itm_scores(model, text_states[neg[a:a + batch_size]], text_atts[neg[a:a + batch_size]], img)
        correct += (pos_s > 0).sum().item() + (neg_s <= 0).sum().item()
    out["itm_acc"] = 100.0 * correct / (2 * n)
    out["n_images"] = n
    model.train(was_training)
    return out


@torch.no_grad()
def rerank_scores(model: nn.Module, image_states: Tensor, image_feat: Tensor, text_states: Tensor,
                  text_atts: Tensor, text_feat: Tensor, k: int, batch_size: int = 256) -> tuple[Tensor, Tensor]:
    """The original's retrieval evaluation, batched across queries: ITC similarities pick each query's
    top-k candidates, which are scored by the raw ITM 'match' logit; every other entry is -100.
    Returns (score_i2t [images, texts], score_t2i [texts, images])."""
    bert = text_bert(model)
    sims = image_feat @ text_feat.t()

    def fused_scores(t_idx: Tensor, i_idx: Tensor) -> Tensor:
        out = []
        for a in range(0, t_idx.numel(), batch_size):
            t, i = t_idx[a:a + batch_size], i_idx[a:a + batch_size]
            img = image_states[i]
            ones = torch.ones(img.shape[:2], dtype=torch.long, device=img.device)
            fused = bert(encoder_embeds=text_states[t], attention_mask=text_atts[t], encoder_hidden_states=img,
                         encoder_attention_mask=ones, mode="fusion")
            out.append(model.itm_head(fused[:, 0])[:, 1])
        return torch.cat(out)

    n_img, n_txt = sims.shape
    score_i2t = torch.full((n_img, n_txt), -100.0, device=sims.device, dtype=sims.dtype)
    kt = min(k, n_txt)
    top_t = sims.topk(kt, dim=1).indices  # [images, k]
    rows = torch.arange(n_img, device=sims.device).repeat_interleave(kt)
    score_i2t[rows, top_t.reshape(-1)] = fused_scores(top_t.reshape(-1), rows).to(score_i2t.dtype)
    score_t2i = torch.full((n_txt, n_img), -100.0, device=sims.device, dtype=sims.dtype)
    ki = min(k, n_img)
    top_i = sims.t().topk(ki, dim=1).indices  # [texts, k]
    rows = torch.arange(n_txt, device=sims.device).repeat_interleave(ki)
    score_t2i[rows, top_i.reshape(-1)] = fused_scores(rows, top_i.reshape(-1)).to(score_t2i.dtype)
    return score_i2t, score_t2i
