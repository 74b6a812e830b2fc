"""Check our models against dumps of the original implementation (`albef-lab verify-reference`).

A dump holds the original's weights, inputs, random draws, intermediates, losses, gradients and
post-step state (format: ../shared/reference/fixtures/README.md). We rebuild the model from its
config, load the weights strictly, inject the draws, run the same step and compare everything.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from contextvars import ContextVar
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor

from albef_lab.config import ModelConfig, model_config_from_reference
from albef_lab.models.albef import ALBEF, PretrainDraws
from albef_lab.models.record import recording
from albef_lab.objectives.mlm import MaskDraws

# Tolerances relative to each tensor's magnitude: max|ours - ref| <= atol + rtol * max|ref|. In float32 another
# operation order moves activations by ~1e-6 relative. In float64 only the reference's own float32 rounding is
# left, up to ~1e-5 relative in its longest chains (soft labels, decoder logits), so a change of about that size
# (BERT's LayerNorm eps 1e-12 -> 1e-5 on these fixtures) cannot be told from it: tests/test_reference.py checks
# such constants directly.
RTOL, ATOL = 1e-4, 1e-5
RTOL_DOUBLE, ATOL_DOUBLE = 2e-5, 1e-8
GRAD_RTOL = 1e-3  # gradients against their magnitude; exactly-zero ones (key biases) against ATOL
_TOLERANCE: ContextVar[tuple[float, float]] = ContextVar("reference_tolerance", default=(RTOL, ATOL))


@dataclass
class Check:
    name: str
    max_abs: float
    max_rel: float
    ok: bool
    detail: str = ""


def compare(name: str, ours: Tensor | float | int, ref: Tensor | float | int, rtol: float | None = None,
            atol: float | None = None) -> Check:
    """One quantity against the reference; tolerances default to the run's dtype (`verify_file`)."""
    rtol = _TOLERANCE.get()[0] if rtol is None else rtol
    atol = _TOLERANCE.get()[1] if atol is None else atol
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


def compare_group(name: str, ours: dict[str, Tensor], ref: dict[str, Tensor], rtol: float | None = None,
                  atol: float | None = None) -> Check:
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
    draws = recorded_draws(d)
    with recording() as rec:
        out = model(_cast(inp["image"], dtype), inp["input_ids"], inp["attention_mask"], inp["alpha"],
                    draws=draws)
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


def recorded_draws(d: dict) -> PretrainDraws:
    """The original's random choices of a pre-training step, to inject into ours."""
    return PretrainDraws(
        neg_image_idx=d["neg_image_idx_for_text"], neg_text_idx=d["neg_text_idx_for_image"],
        mask=MaskDraws(d["mlm_bernoulli_mask_draw"], d["mlm_bernoulli_replace_draw"],
                       d["mlm_bernoulli_random_draw"], d["mlm_random_words"]))


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
    checks.append(compare_group("grads", _grads(model), fx_part["grads"], rtol=GRAD_RTOL, atol=ATOL))
    return checks


def verify_retrieval(fx: dict, dtype: torch.dtype) -> list[Check]:
    from albef_lab.eval.retrieval import rerank_scores
    from albef_lab.models.tasks import ALBEFRetrieval

    cfg = _config(fx)
    tr = fx["train"]
    model = build_reference_model(ALBEFRetrieval, cfg, fx["state_dict_before"], dtype).train()
    inp, d = tr["inputs"], tr["draws"]
    with recording() as rec:
        out = model(_cast(inp["image"], dtype), inp["input_ids"], inp["attention_mask"], inp["alpha"],
                    image_ids=inp["idx"],
                    draws=PretrainDraws(d["neg_image_idx_for_text"], d["neg_text_idx_for_image"]))
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
        image_states, image_feat = model.encode_image(_cast(e["images"], dtype))
        text_states, text_feat = model.encode_text(e["text_input_ids"], e["text_attention_mask"])
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
    with recording() as rec:
        loss = model(_cast(i["image"], dtype), i["question_input_ids"], i["question_attention_mask"],
                     i["answer_input_ids"], i["answer_attention_mask"], i["k"], _cast(i["weights"], dtype),
                     i["alpha"])
    loss.backward()
    rec["shifted_prediction_scores"] = rec["decoder_logits"][:, :-1]
    checks = _many("train.intermediates", rec, tr["intermediates"])
    checks.append(compare("train.outputs.loss", loss, tr["outputs"]["loss"]))
    checks += _after(model, tr)

    ev = fx["eval"]
    model = build_reference_model(ALBEFVQA, cfg, fx["state_dict_before"], dtype).eval()
    e = ev["inputs"]
    with recording() as rec:
        topk_ids, topk_probs = model.rank_answers(_cast(e["image"], dtype), e["question_input_ids"],
                                                  e["question_attention_mask"], e["answer_list_input_ids"],
                                                  e["answer_list_attention_mask"], e["k"])
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
    images = _cast(i["images"], dtype)
    with recording() as rec:
        loss = model(images, i["input_ids"], i["attention_mask"], i["targets"], i["alpha"])
    loss.backward()
    if pair:
        b = i["input_ids"].shape[0]
        rec["image0_embeds"], rec["image1_embeds"] = rec["image_embeds"][:b], rec["image_embeds"][b:]
    checks = _many("intermediates", rec, fx["intermediates"])
    checks.append(compare("outputs.loss", loss, fx["outputs"]["loss"]))
    fresh = build_reference_model(cls, cfg, fx["state_dict_before"], dtype)
    with torch.no_grad():
        pred = fresh.logits(images, i["input_ids"], i["attention_mask"])
    checks.append(compare("outputs.prediction_eval", pred, fx["outputs"]["prediction_eval"]))
    checks += _after(model, fx)
    return checks


def verify_pretrain_nlvr(fx: dict, dtype: torch.dtype) -> list[Check]:
    from albef_lab.models.tasks import ALBEFPretrainNLVR, RandomSource

    cfg = _config(fx)
    model = build_reference_model(ALBEFPretrainNLVR, cfg, fx["state_dict_before"], dtype).train()
    i = fx["inputs"]
    with recording() as rec:
        loss = model(_cast(i["image"], dtype), i["input_ids"], i["attention_mask"],
                     source=RandomSource(log=fx["draws"]["raw_log"]))
    loss.backward()
    checks = _many("intermediates", rec, fx["intermediates"])
    checks.append(compare("outputs.loss", loss, fx["outputs"]["loss"]))
    checks.append(compare_group("grads", _grads(model), fx["grads"], rtol=GRAD_RTOL, atol=ATOL))
    return checks


def verify_grounding(fx: dict, dtype: torch.dtype) -> list[Check]:
    """Grad-CAM maps in both modes (with the attention maps and gradients they came from) and the
    proposal ranking, on the original's maps and on smooth bump maps."""
    from albef_lab.eval.grounding import grounding_hit, split_accuracy
    from albef_lab.models.tasks import ALBEFRetrieval
    from albef_lab.viz.gradcam import itc_gradcam, itm_gradcam

    c = fx["config"]
    cfg = model_config_from_reference(c["model_config"], c["bert_config"], c["vit"])
    model = build_reference_model(ALBEFRetrieval, cfg, fx["state_dict"], dtype).eval()
    i = fx["inputs"]
    image = i["image_float16"].to(dtype)
    checks = []
    with recording() as rec:
        rec["gradcam"] = itm_gradcam(model, image, i["input_ids"], i["attention_mask"], fx["itm"]["block_num"])
    checks += _many("itm", rec, fx["itm"], ["gradcam", "attention_map", "attn_gradients", "itm_logits"])
    with recording() as rec:
        rec["gradcam"] = itc_gradcam(model, image, i["input_ids"], i["attention_mask"], fx["itc"]["block_num"])
    checks += _many("itc", rec, fx["itc"], ["gradcam", "cls_attention_map", "cls_attn_gradients", "sim"])

    r = fx["ranking"]["inputs"]
    maps = {"itm": fx["itm"]["gradcam"], "itc": fx["itc"]["gradcam"], "bump": r["bump_maps"]}
    for mode, cams in maps.items():
        hits = []
        for ref, cam in zip(r["refs"], cams, strict=True):
            image_info = r["images"][str(ref["image_id"])]
            hits.append(grounding_hit(cam, ref["bbox"], image_info["height"], image_info["width"],
                                      r["dets"][str(ref["image_id"])], r["alpha"]))
        ref_out = fx["ranking"]["outputs"][mode]
        checks.append(_equal(f"ranking.{mode}.hit_per_ref", hits, ref_out["hit_per_ref"]))
        acc = split_accuracy(hits, [ref["split"] for ref in r["refs"]])
        checks += [compare(f"ranking.{mode}.{k}", acc[f"acc_{k.removesuffix('_d')}"] / 100, v)
                   for k, v in ref_out.items() if k.endswith("_d")]
    return checks


def _equal(name: str, ours, ref) -> Check:
    ok = list(ours) == list(ref)
    return Check(name, 0.0 if ok else float("inf"), 0.0 if ok else float("inf"), ok, "" if ok else f"{ours} != {ref}")


MOMENTUM_PARTS = ("visual_encoder_m", "text_encoder_m", "vision_proj_m", "text_proj_m")


def generated_weights(keys: dict[str, torch.Size], seed: int) -> dict[str, Tensor]:
    """The weight rule of pretrain_base.pt (fixtures/README.md): every float entry from a seeded normal per key.

    `keys`: the float state-dict entries in state-dict order. Returns float64 values; for the two tied
    pairs the caller's load order makes the later key win, as the original's `load_state_dict` did.
    """
    import re
    import zlib

    def z(k: str) -> Tensor:
        g = torch.Generator().manual_seed((zlib.crc32(k.encode()) + seed) % 2**63)
        return torch.randn(keys[k], generator=g, dtype=torch.float64)

    made: dict[str, Tensor] = {}

    def value(k: str) -> Tensor:
        if k not in made:  # a momentum value derives from its online value: each is drawn once
            made[k] = rule(k)
        return made[k]

    def rule(k: str) -> Tensor:
        first, _, rest = k.partition(".")
        if first in MOMENTUM_PARTS:
            return value(f"{first.removesuffix('_m')}.{rest}") + 0.01 * z(k)
        if k == "text_encoder.cls.predictions.decoder.weight":
            return value("text_encoder.bert.embeddings.word_embeddings.weight")
        if k in ("image_queue", "text_queue"):
            return torch.nn.functional.normalize(z(k), dim=0)
        if re.search(r"(LayerNorm|norm\d*)\.weight$", k):
            return 1 + 0.1 * z(k)
        if re.search(r"(LayerNorm|norm\d*)\.bias$", k):
            return 0.1 * z(k)
        if "embeddings" in k or k.endswith(("cls_token", "pos_embed")):
            return 0.1 * z(k)
        if len(keys[k]) >= 2:
            t = z(k)
            return t / math.sqrt(t.numel() / keys[k][0])
        return 0.02 * z(k)

    return {k: value(k) for k in keys}


def compare_summaries(name: str, ours: dict[str, Tensor], ref: dict[str, dict], rtol: float,
                      atol_scale: float = 1e-6) -> Check:
    """Tensors against recorded {norm, first values}: both within rtol x the recorded norm, plus an absolute
    floor of atol_scale x the largest recorded norm (for quantities that are zero up to rounding)."""
    atol = atol_scale * max((r["norm"] for r in ref.values()), default=0.0)
    checks, missing = [], sorted(set(ref) - set(ours))
    for k, r in ref.items():
        if k not in ours:
            continue
        t = ours[k].detach().double().flatten()
        first = torch.as_tensor(r["first"], dtype=torch.float64)
        err = max(abs(t.norm().item() - r["norm"]), (t[: first.numel()] - first).abs().max().item())
        checks.append(Check(k, err, err / r["norm"] if r["norm"] else float("inf"), err <= rtol * r["norm"] + atol))
    failed = [c.name for c in checks if not c.ok]
    notes = ([f"missing {missing[:5]}"] if missing else []) + ([f"failed {failed[:5]}"] if failed else [])
    return Check(f"{name} ({len(ref)} tensors)", max((c.max_abs for c in checks), default=0.0),
                 max((c.max_rel for c in checks), default=0.0), not (missing or failed), "; ".join(notes))


def verify_pretrain_generated(fx: dict, dtype: torch.dtype) -> list[Check]:
    """One step of the paper-size model whose weights are rebuilt from the fixture's rule."""
    c = fx["config"]
    cfg = model_config_from_reference(c["model_config"], c["bert_config"], c["vit"])
    w = c["weights"]
    with torch.device("meta"):  # the shapes, without the memory
        shapes = {k: v.shape for k, v in ALBEF(cfg).state_dict().items() if v.is_floating_point() and k != "temp"}
    # the recorded samples first: a wrong rebuild fails in seconds, before the paper-size model is built
    wanted = set(fx["weights_check"]) & set(shapes)
    online = {".".join([k.split(".")[0].removesuffix("_m"), *k.split(".")[1:]]) for k in wanted}
    sample = generated_weights({k: shapes[k] for k in wanted | (online & set(shapes))}, w["seed"])
    checks = [compare_summaries("weights_check", sample, fx["weights_check"], rtol=1e-6)]
    del sample
    if not checks[0].ok:  # a wrong rebuild makes everything below meaningless
        return checks
    model = ALBEF(cfg)
    own = model.state_dict()
    values = generated_weights(shapes, w["seed"])
    values["temp"] = torch.tensor(float(w["temp"]))
    values["queue_ptr"] = torch.tensor([int(w["queue_ptr"])])
    for k in own:  # in key order, so that the later key of a tied pair wins
        if k in values:
            own[k].copy_(values[k].to(own[k].dtype))
    del values
    model = model.to(dtype).train()
    inp, d = fx["inputs"], fx["draws"]
    draws = recorded_draws(d)
    ptr = int(model.queue_ptr)
    with recording() as rec:
        out = model(_cast(inp["image"], dtype), inp["input_ids"], inp["attention_mask"], inp["alpha"], draws=draws)
    out["loss"].backward()
    n = inp["input_ids"].shape[0]
    head = n + 256
    rec.update(image_cls=rec["image_embeds"][:, 0], text_cls=rec["text_embeds"][:, 0],
               sim_i2t_head=rec["sim_i2t"][:, :head], sim_t2i_head=rec["sim_t2i"][:, :head],
               sim_i2t_logsumexp=rec["sim_i2t"].logsumexp(1), sim_t2i_logsumexp=rec["sim_t2i"].logsumexp(1),
               sim_i2t_targets_head=rec["sim_i2t_targets"][:, :head])
    checks += [compare(f"draws.{k}", rec[k], d[k]) for k in ("mlm_input_ids", "mlm_labels")]
    checks += _many("intermediates", rec, fx["intermediates"], list(fx["intermediates"]))
    checks += [compare(f"outputs.{k}", out[k], fx["outputs"][k]) for k in ("loss_ita", "loss_itm", "loss_mlm")]
    checks.append(compare("outputs.loss_total", out["loss"], fx["outputs"]["loss_total"]))
    after, sd = fx["after"], model.state_dict()
    checks += [compare("after.queue_ptr", model.queue_ptr, after["queue_ptr"]),
               compare("after.image_queue_written", model.image_queue[:, ptr:ptr + n], after["image_queue_written"]),
               compare("after.text_queue_written", model.text_queue[:, ptr:ptr + n], after["text_queue_written"]),
               compare("after.temp_after_forward", model.temp, after["temp_after_forward"]),
               compare_summaries("after.momentum", sd, after["momentum"], rtol=RTOL),
               compare_summaries("grads", _grads(model), fx["grads"], rtol=GRAD_RTOL)]
    return checks


def verify_randaugment(fx: dict, dtype: torch.dtype) -> list[Check]:
    """The original's augmentation, op by op and end to end under its numpy seeds: exact (uint8), whatever
    `dtype` (the ops are integer arithmetic)."""
    import numpy as np

    from albef_lab.data.randaugment import RandomAugment, apply_op

    image = fx["inputs"]["image"].numpy().astype(np.uint8)
    checks = []
    for case in fx["cases"]:
        sign = "" if not case["args"] else ("+" if case["args"][0] > 0 else "-")
        out = apply_op(case["op"], image, case["args"])
        checks.append(compare(f"cases.{case['op']}{sign}", torch.from_numpy(out), case["output"], rtol=0, atol=0))
    aug = RandomAugment(2, fx["level"], fx["augs"])
    for entry in fx["pipeline"]:
        state = np.random.get_state()
        np.random.seed(entry["np_seed"])
        try:
            out = aug(image)
        finally:
            np.random.set_state(state)
        drawn = [(a["op"], tuple(a["args"])) for a in entry["applied"]]
        check = compare(f"pipeline.seed{entry['np_seed']}", torch.from_numpy(out), entry["output"], rtol=0, atol=0)
        if aug.applied != drawn:
            check.ok, check.detail = False, f"applied {aug.applied}, the original {drawn}"
        checks.append(check)
    return checks


VERIFIERS: dict[str, Callable[[dict, torch.dtype], list[Check]]] = {
    "pretrain": verify_pretrain, "retrieval": verify_retrieval, "vqa": verify_vqa, "nlvr": verify_classifier,
    "ve": verify_classifier, "pretrain_nlvr": verify_pretrain_nlvr, "grounding": verify_grounding,
    "pretrain_generated": verify_pretrain_generated, "randaugment": verify_randaugment,
}


def verify_file(path: str | Path, dtype: torch.dtype = torch.float32) -> list[Check]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"reference dump not found: {path}")
    fx = torch.load(path, map_location="cpu", weights_only=True)
    kind = fx.get("meta", {}).get("kind") or fx.get("kind")
    if kind not in VERIFIERS:
        raise ValueError(f"{path}: unsupported reference kind {kind!r}; supported: {sorted(VERIFIERS)}")
    token = _TOLERANCE.set((RTOL_DOUBLE, ATOL_DOUBLE) if dtype == torch.float64 else (RTOL, ATOL))
    try:
        return VERIFIERS[kind](fx, dtype)
    finally:
        _TOLERANCE.reset(token)


def format_checks(checks: list[Check]) -> str:
    width = max(len(c.name) for c in checks)
    lines = [f"{'quantity':<{width}}  {'max abs err':>11}  {'max rel err':>11}  result"]
    for c in checks:
        line = f"{c.name:<{width}}  {c.max_abs:>11.3e}  {c.max_rel:>11.3e}  {'PASS' if c.ok else 'FAIL'}"
        lines.append(line + (f"  ({c.detail})" if c.detail else ""))
    n_fail = sum(not c.ok for c in checks)
    lines.append(f"{len(checks) - n_fail} of {len(checks)} checks passed" + (f", {n_fail} FAILED" if n_fail else ""))
    return "\n".join(lines)
