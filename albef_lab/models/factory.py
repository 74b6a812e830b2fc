"""Build models by name, inspect their layout, and save/load our own checkpoints (which carry the config)."""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch import nn

from albef_lab import __version__
from albef_lab.config import ModelConfig, to_dict
from albef_lab.models.albef import ALBEF
from albef_lab.models.checkpoint import LoadReport, load_for_task, recognise, save_atomic
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


def load_model(path: str | Path, task: str | None = None, arch: ModelConfig | None = None,
               infer_image_size: bool = True) -> tuple[nn.Module, ModelConfig, LoadReport]:
    """The model a checkpoint holds (`recognise`: ours carry their config; an official file is built as `arch` at
    its own image size), or with `task` the model of that task it initialises (a pre-training file then maps as
    the original's scripts do, `load_for_task`)."""
    found = recognise(path, arch, infer_image_size)
    name = task or found.task
    model = create_model(name, found.config)
    report = load_for_task(model, name, found.state_dict, fusion_layer=found.config.text.fusion_layer)
    return model, found.config, report


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
