"""Build models by name, inspect their layout, and save/load our own checkpoints (which carry the config)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from albef_lab import __version__
from albef_lab.config import ModelConfig, model_config_from_dict, to_dict
from albef_lab.models.albef import ALBEF
from albef_lab.models.checkpoint import (
    CheckpointError,
    LoadReport,
    load_for_task,
    read_file,
    save_atomic,
    state_dict_of,
)
from albef_lab.models.registry import task_spec
from albef_lab.models.tasks import with_nlvr_layers


def task_config(name: str, cfg: ModelConfig) -> ModelConfig:
    """The config a task model is built from, given the pre-training config."""
    return with_nlvr_layers(cfg) if task_spec(name).expand_fusion else cfg


def create_model(name: str, cfg: ModelConfig, device: str | torch.device | None = None,
                 expand: bool = True) -> nn.Module:
    """Build model `name`; `expand=False` takes `cfg` as is (e.g. an NLVR2 config already at 18 layers)."""
    cls = task_spec(name).model
    cfg = task_config(name, cfg) if expand else cfg
    if device is None:
        return cls(cfg)
    with torch.device(device):
        return cls(cfg)


def state_dict_tsv(model: nn.Module) -> str:
    """`key<TAB>shape<TAB>dtype` per state-dict entry, the format of ../shared/reference/keys/*.tsv."""
    lines = [f"{k}\t{json.dumps(list(v.shape))}\t{str(v.dtype).removeprefix('torch.')}"
             for k, v in model.state_dict().items()]
    return "\n".join(lines) + "\n"


def save_model(path: str | Path, model: nn.Module, cfg: ModelConfig, name: str = "pretrain", **extra) -> None:
    save_atomic({"model": model.state_dict(), "config": to_dict(cfg), "model_name": name,
                 "albef_lab_version": __version__, **extra}, path)


def has_config(obj: dict) -> bool:
    """Is this one of our checkpoints (which carry their model config)?"""
    return isinstance(obj.get("config"), dict) and "vision" in obj["config"]


def load_model(path: str | Path, task: str | None = None) -> tuple[nn.Module, ModelConfig, LoadReport]:
    """Rebuild a model from one of our checkpoints (its config travels inside the file).

    `task` (default: the file's own) may differ from the file's: a pre-training file then initialises the
    task model with the original's key mapping (see `load_for_task`).
    """
    obj = read_file(path)
    if not has_config(obj):
        raise CheckpointError(f"{path} has no albef-lab config; for official files build the model from a "
                              "preset (--preset base) and load it with albef_lab.models.checkpoint.load_for_task")
    cfg = model_config_from_dict(obj["config"])
    name = task or obj.get("model_name", "pretrain")
    model = create_model(name, cfg)
    report = load_for_task(model, name, state_dict_of(obj, path), fusion_layer=cfg.text.fusion_layer)
    return model, cfg, report


def _numel(params) -> int:
    seen, total = set(), 0
    for p in params:
        if id(p) not in seen:
            seen.add(id(p))
            total += p.numel()
    return total


def parameter_counts(model: ALBEF) -> list[tuple[str, int]]:
    """Parameter counts per part of a pre-training model (tied weights counted once)."""
    bert, fusion = model.text_encoder.bert, model.cfg.text.fusion_layer
    layers = bert.encoder.layer
    text_layers = [p for layer in layers[:fusion] for p in layer.parameters()]
    fusion_layers = [p for layer in layers[fusion:] for p in layer.parameters()]
    cross = [p for layer in layers[fusion:] for p in layer.crossattention.parameters()]
    head = model.text_encoder.cls.predictions
    mlm_head = list(head.transform.parameters()) + [head.bias]
    rows = [
        ("image encoder (ViT)", _numel(model.visual_encoder.parameters())),
        ("text embeddings", _numel(bert.embeddings.parameters())),
        (f"text encoder (layers 0-{fusion - 1})", _numel(text_layers)),
        (f"fusion encoder (layers {fusion}-{len(layers) - 1})", _numel(fusion_layers)),
        ("  of which cross-attention", _numel(cross)),
        ("BERT total (embeddings + text + fusion)", _numel(bert.parameters())),
        ("MLM head (decoder tied to embeddings)", _numel(mlm_head)),
        ("BERT + MLM head (the paper's 'BERT-base')", _numel([*bert.parameters(), *mlm_head])),
        ("projections + ITM head + temp", _numel([*model.vision_proj.parameters(), *model.text_proj.parameters(),
                                                  *model.itm_head.parameters(), model.temp])),
        ("trainable total", _numel(p for p in model.parameters() if p.requires_grad)),
        ("momentum copies (EMA, frozen)", _numel(p for p in model.parameters() if not p.requires_grad)),
        ("queue buffers (elements)", model.image_queue.numel() + model.text_queue.numel()),
    ]
    return rows
