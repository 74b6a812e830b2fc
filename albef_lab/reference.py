"""Check our models against dumps of the original implementation (`albef-lab verify-reference`).

A dump holds the original's weights, inputs, random draws, intermediates, losses, gradients and
post-step state (format: ../shared/reference/fixtures/README.md). We rebuild the model from its
config, load the weights strictly, inject the draws, run the same step and compare everything.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from albef_lab.config import ModelConfig, model_config_from_reference
from albef_lab.models.albef import ALBEF, PretrainDraws
from albef_lab.objectives.mlm import MaskDraws

# Tolerances relative to each tensor's magnitude: max|ours - ref| <= atol + rtol * max|ref|.
RTOL, ATOL = 1e-4, 1e-5
GRAD_RTOL = 1e-3


@dataclass
class Check:
    name: str
    max_abs: float
    max_rel: float
    ok: bool
    detail: str = ""


def compare(name: str, ours: Tensor | float | int, ref: Tensor | float | int, rtol: float = RTOL,
            atol: float = ATOL) -> Check:
    ours_t = torch.as_tensor(ours).detach().double().cpu()
    ref_t = torch.as_tensor(ref).detach().double().cpu()
    if ours_t.shape != ref_t.shape:
        return Check(name, float("inf"), float("inf"), False,
                     f"shape {tuple(ours_t.shape)} != reference {tuple(ref_t.shape)}")
    if ref_t.numel() == 0:
        return Check(name, 0.0, 0.0, True)
    err = (ours_t - ref_t).abs()
    if not torch.isfinite(ours_t).all() and not torch.equal(ours_t.isnan(), ref_t.isnan()):
        return Check(name, float("nan"), float("nan"), False, "non-finite values")
    err = torch.nan_to_num(err, nan=0.0)
    scale = ref_t.abs().nan_to_num(0.0).max().item()
    max_abs = err.max().item()
    max_rel = max_abs / scale if scale > 0 else (0.0 if max_abs == 0 else float("inf"))
    return Check(name, max_abs, max_rel, max_abs <= atol + rtol * scale)


def compare_group(name: str, ours: dict[str, Tensor], ref: dict[str, Tensor], rtol: float = RTOL,
                  atol: float = ATOL) -> Check:
    """One line for a dict of tensors (gradients, momentum weights): the worst entry decides."""
    missing = sorted(set(ref) - set(ours))
    extra = sorted(set(ours) - set(ref))
    checks = [compare(k, ours[k], ref[k], rtol, atol) for k in ref if k in ours]
    failed = [c.name for c in checks if not c.ok]
    worst_abs = max((c.max_abs for c in checks), default=0.0)
    worst_rel = max((c.max_rel for c in checks), default=0.0)
    notes = []
    if missing:
        notes.append(f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}")
    if extra:
        notes.append(f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''}")
    if failed:
        notes.append(f"failed {failed[:5]}{'...' if len(failed) > 5 else ''}")
    ok = not (missing or extra or failed)
    return Check(f"{name} ({len(ref)} tensors)", worst_abs, worst_rel, ok, "; ".join(notes))


def _cast(x, dtype: torch.dtype):
    return x.to(dtype) if torch.is_tensor(x) and x.is_floating_point() else x


def _grads(model: torch.nn.Module) -> dict[str, Tensor]:
    return {n: p.grad for n, p in model.named_parameters() if p.grad is not None}


def verify_pretrain(fx: dict, dtype: torch.dtype) -> list[Check]:
    c = fx["config"]
    cfg = model_config_from_reference(c["model_config"], c["bert_config"], c["vit"])
    tok = c.get("tokenizer", {})
    cfg.cls_token_id, cfg.mask_token_id = tok.get("cls", 101), tok.get("mask", 103)
    model = build_reference_model(ALBEF, cfg, fx["state_dict_before"], dtype)
    model.train()
    inp, d = fx["inputs"], fx["draws"]
    draws = PretrainDraws(
        neg_image_idx=d["neg_image_idx_for_text"], neg_text_idx=d["neg_text_idx_for_image"],
        mask=MaskDraws(d["mlm_bernoulli_mask_draw"], d["mlm_bernoulli_replace_draw"],
                       d["mlm_bernoulli_random_draw"], d["mlm_random_words"]))
    rec: dict = {}
    out = model(_cast(inp["image"], dtype), inp["input_ids"], inp["attention_mask"], inp["alpha"],
                draws=draws, record=rec)
    out["loss"].backward()

    checks = [compare(f"draws.{k}", rec[k], d[k]) for k in ("mlm_input_ids", "mlm_labels")]
    names = ["temp_used", "image_embeds", "image_feat", "text_embeds", "text_feat", "image_embeds_m",
             "image_feat_m", "text_embeds_m", "text_feat_m", "image_feat_all", "text_feat_all", "sim_i2t_m",
             "sim_t2i_m", "sim_targets", "sim_i2t_targets", "sim_t2i_targets", "sim_i2t", "sim_t2i",
             "loss_i2t", "loss_t2i", "output_pos", "weights_i2t", "weights_t2i", "output_neg",
             "vl_embeddings", "vl_output", "itm_labels", "logits_m", "soft_labels", "mlm_logits"]
    ref_i = fx["intermediates"]
    checks += [compare(f"intermediates.{k}", rec[k], ref_i[k]) for k in names if k in ref_i]
    ref_o = fx["outputs"]
    checks += [compare(f"outputs.{k}", out[k], ref_o[k]) for k in ("loss_ita", "loss_itm", "loss_mlm")]
    checks.append(compare("outputs.loss_total", out["loss"], ref_o["loss_total"]))
    checks.append(compare("after.temp_after_forward", model.temp, fx["after"]["temp_after_forward"]))
    return checks + _after(model, fx, ("image_queue", "text_queue", "queue_ptr"))


def build_reference_model(cls: type, cfg: ModelConfig, state_dict: dict, dtype: torch.dtype):
    model = cls(cfg)
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    if missing or unexpected:
        raise KeyError(f"fixture weights do not fit {cls.__name__}: missing {missing}, unexpected {unexpected}")
    return model.to(dtype)


def _config(fx: dict, bert_key: str = "bert_config") -> ModelConfig:
    c = fx["config"]
    cfg = model_config_from_reference(c["model_config"], c[bert_key], c["vit"])
    if c.get("momentum") is not None:  # the task models hard-code 0.995; the fixture records it
        cfg.momentum = float(c["momentum"])
    return cfg


def _many(prefix: str, rec: dict, ref: dict, names: list[str] | None = None) -> list[Check]:
    names = [k for k in ref if k in rec] if names is None else names
    return [compare(f"{prefix}.{k}", rec[k], ref[k]) for k in names]


def _after(model: torch.nn.Module, fx_part: dict, keys: tuple[str, ...] = ()) -> list[Check]:
    sd = model.state_dict()
    after = fx_part["after"]
    checks = [compare(f"after.{k}", sd[k], after[k]) for k in keys]
    if after.get("momentum_params"):
        checks.append(compare_group("after.momentum_params",
                                    {k: sd[k] for k in after["momentum_params"] if k in sd}, after["momentum_params"]))
    checks.append(compare_group("grads", _grads(model), fx_part["grads"], rtol=GRAD_RTOL))
    return checks


def verify_retrieval(fx: dict, dtype: torch.dtype) -> list[Check]:
    from albef_lab.eval.retrieval import rerank_scores
    from albef_lab.models.tasks import ALBEFRetrieval

    cfg = _config(fx)
    tr = fx["train"]
    model = build_reference_model(ALBEFRetrieval, cfg, fx["state_dict_before"], dtype).train()
    inp, d = tr["inputs"], tr["draws"]
    rec: dict = {}
    out = model(_cast(inp["image"], dtype), inp["input_ids"], inp["attention_mask"], inp["alpha"],
                idx=inp["idx"], draws=PretrainDraws(d["neg_image_idx_for_text"], d["neg_text_idx_for_image"]),
                record=rec)
    out["loss"].backward()
    checks = _many("train.intermediates", rec, tr["intermediates"])
    checks += [compare(f"train.outputs.{k}", out[k], tr["outputs"][k]) for k in ("loss_ita", "loss_itm")]
    checks.append(compare("train.outputs.loss_total", out["loss"], tr["outputs"]["loss_total"]))
    checks += _after(model, tr, ("image_queue", "text_queue", "idx_queue", "queue_ptr"))
    checks.append(compare("train.after.temp_after_forward", model.temp, tr["after"]["temp_after_forward"]))

    ev = fx["eval"]
    model = build_reference_model(ALBEFRetrieval, cfg, fx["state_dict_before"], dtype).eval()
    e = ev["inputs"]
    with torch.no_grad():
        image_states = model.visual_encoder(_cast(e["images"], dtype))
        image_feat = torch.nn.functional.normalize(model.vision_proj(image_states[:, 0]), dim=-1)
        text_states = model.text_encoder(e["text_input_ids"], e["text_attention_mask"], mode="text")
        text_feat = torch.nn.functional.normalize(model.text_proj(text_states[:, 0]), dim=-1)
        s_i2t, s_t2i = rerank_scores(model, image_states, image_feat, text_states, e["text_attention_mask"],
                                     text_feat, e["k_test"])
    ri = ev["intermediates"]
    checks += [compare("eval.intermediates.text_feats", text_states, ri["text_feats"]),
               compare("eval.intermediates.text_embeds", text_feat, ri["text_embeds"]),
               compare("eval.intermediates.image_feats", image_states, ri["image_feats"]),
               compare("eval.intermediates.image_embeds", image_feat, ri["image_embeds"]),
               compare("eval.intermediates.sims_matrix_i2t", image_feat @ text_feat.t(), ri["sims_matrix_i2t"]),
               compare("eval.outputs.score_matrix_i2t", s_i2t, ev["outputs"]["score_matrix_i2t"]),
               compare("eval.outputs.score_matrix_t2i", s_t2i, ev["outputs"]["score_matrix_t2i"])]
    return checks


def verify_vqa(fx: dict, dtype: torch.dtype) -> list[Check]:
    from albef_lab.models.tasks import ALBEFVQA, decoder_config

    cfg = _config(fx)
    n_dec = cfg.decoder_layers = fx["config"]["decoder_bert_config"]["num_hidden_layers"]
    expected = model_config_from_reference({}, fx["config"]["decoder_bert_config"], {})
    if decoder_config(cfg.text, n_dec) != expected.text:
        raise ValueError("the fixture's decoder config is not the one ALBEFVQA derives from its text config")
    tr = fx["train"]
    model = build_reference_model(ALBEFVQA, cfg, fx["state_dict_before"], dtype).train()
    i = tr["inputs"]
    rec: dict = {}
    loss = model(_cast(i["image"], dtype), i["question_input_ids"], i["question_attention_mask"],
                 i["answer_input_ids"], i["answer_attention_mask"], i["k"], _cast(i["weights"], dtype), i["alpha"],
                 record=rec)
    loss.backward()
    rec["shifted_prediction_scores"] = rec["decoder_logits"][:, :-1]
    checks = _many("train.intermediates", rec, tr["intermediates"])
    checks.append(compare("train.outputs.loss", loss, tr["outputs"]["loss"]))
    checks += _after(model, tr)

    ev = fx["eval"]
    model = build_reference_model(ALBEFVQA, cfg, fx["state_dict_before"], dtype).eval()
    e = ev["inputs"]
    rec = {}
    topk_ids, topk_probs = model.rank_answers(_cast(e["image"], dtype), e["question_input_ids"],
                                              e["question_attention_mask"], e["answer_list_input_ids"],
                                              e["answer_list_attention_mask"], e["k"], record=rec)
    checks += _many("eval.intermediates", rec, ev["intermediates"])
    checks += [compare("eval.outputs.topk_ids", topk_ids, ev["outputs"]["topk_ids"]),
               compare("eval.outputs.topk_probs", topk_probs, ev["outputs"]["topk_probs"])]
    predicted = [e["answer_list"][int(topk_ids[b, topk_probs[b].argmax()])] for b in range(topk_ids.shape[0])]
    ok = predicted == ev["outputs"]["predicted_answers"]
    checks.append(Check("eval.outputs.predicted_answers", 0.0 if ok else float("inf"), 0.0 if ok else float("inf"),
                        ok, "" if ok else f"{predicted} != {ev['outputs']['predicted_answers']}"))
    return checks


def verify_classifier(fx: dict, dtype: torch.dtype) -> list[Check]:
    from albef_lab.models.tasks import ALBEFNLVR, ALBEFVE

    pair = fx["meta"]["kind"] == "nlvr"
    cls = ALBEFNLVR if pair else ALBEFVE
    cfg = _config(fx, "effective_bert_config" if "effective_bert_config" in fx["config"] else "bert_config")
    model = build_reference_model(cls, cfg, fx["state_dict_before"], dtype).train()
    i = fx["inputs"]
    rec: dict = {}
    images = _cast(i["images"], dtype)
    loss = model(images, i["input_ids"], i["attention_mask"], i["targets"], i["alpha"], record=rec)
    loss.backward()
    if pair:
        b = i["input_ids"].shape[0]
        rec["image0_embeds"], rec["image1_embeds"] = rec["image_embeds"][:b], rec["image_embeds"][b:]
    checks = _many("intermediates", rec, fx["intermediates"])
    checks.append(compare("outputs.loss", loss, fx["outputs"]["loss"]))
    fresh = build_reference_model(cls, cfg, fx["state_dict_before"], dtype)
    with torch.no_grad():
        pred = fresh(images, i["input_ids"], i["attention_mask"], train=False)
    checks.append(compare("outputs.prediction_eval", pred, fx["outputs"]["prediction_eval"]))
    checks += _after(model, fx)
    return checks


def verify_pretrain_nlvr(fx: dict, dtype: torch.dtype) -> list[Check]:
    from albef_lab.models.tasks import ALBEFPretrainNLVR, RandomSource

    cfg = _config(fx)
    model = build_reference_model(ALBEFPretrainNLVR, cfg, fx["state_dict_before"], dtype).train()
    i = fx["inputs"]
    rec: dict = {}
    loss = model(_cast(i["image"], dtype), i["input_ids"], i["attention_mask"],
                 source=RandomSource(log=fx["draws"]["raw_log"]), record=rec)
    loss.backward()
    checks = _many("intermediates", rec, fx["intermediates"])
    checks.append(compare("outputs.loss", loss, fx["outputs"]["loss"]))
    checks.append(compare_group("grads", _grads(model), fx["grads"], rtol=GRAD_RTOL))
    return checks


VERIFIERS: dict[str, Callable[[dict, torch.dtype], list[Check]]] = {
    "pretrain": verify_pretrain, "retrieval": verify_retrieval, "vqa": verify_vqa, "nlvr": verify_classifier,
    "ve": verify_classifier, "pretrain_nlvr": verify_pretrain_nlvr,
}


def verify_file(path: str | Path, dtype: torch.dtype = torch.float32) -> list[Check]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference dump not found: {path}")
    fx = torch.load(path, map_location="cpu", weights_only=True)
    kind = fx.get("meta", {}).get("kind")
    if kind not in VERIFIERS:
        raise ValueError(f"{path}: unsupported reference kind {kind!r}; supported: {sorted(VERIFIERS)}")
    return VERIFIERS[kind](fx, dtype)


def format_checks(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'quantity':<{width}}  {'max abs err':>11}  {'max rel err':>11}  result"]
    for c in checks:
        line = f"{c.name:<{width}}  {c.max_abs:>11.3e}  {c.max_rel:>11.3e}  {'PASS' if c.ok else 'FAIL'}"
        lines.append(line + (f"  ({c.detail})" if c.detail else ""))
    n_fail = sum(not c.ok for c in checks)
    lines.append(f"{len(checks) - n_fail} of {len(checks)} checks passed" + (f", {n_fail} FAILED" if n_fail else ""))
    return "\n".join(lines)
