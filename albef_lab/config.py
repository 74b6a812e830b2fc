"""Configuration: dataclass presets (`tiny`, `base`), YAML files and `key=value` overrides.

A YAML file is a nested mapping onto `Config`; it may name a `preset` to start from. Overrides
use dotted keys (`model.text.hidden_size=64`) and YAML values (`train.precision=bf16`, `model.distill=false`).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    """A configuration the user wrote is wrong (unknown key, wrong type, unreadable YAML)."""


@dataclass
class VisionConfig:
    """ViT image encoder (the paper: ViT-B/16)."""

    image_res: int = 256
    patch_size: int = 16
    width: int = 768
    depth: int = 12
    num_heads: int = 12
    mlp_ratio: float = 4.0
    qkv_bias: bool = True
    layer_norm_eps: float = 1e-6
    init_std: float = 0.02  # truncated-normal std of weights trained from scratch
    conv_stem: bool = False  # 3x3 stride-2 convolutions in place of the patch projection (False: ViT, the paper)


@dataclass
class TextConfig:
    """BERT text + fusion encoder; the field names follow `BertConfig` so the official json maps 1:1."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    pad_token_id: int = 0
    fusion_layer: int = 6
    encoder_width: int = 768
    initializer_range: float = 0.02  # normal std of weights trained from scratch (BertConfig's name)


@dataclass
class ModelConfig:
    """Everything that decides the shapes and the numbers of an ALBEF model."""

    vision: VisionConfig = field(default_factory=VisionConfig)
    text: TextConfig = field(default_factory=TextConfig)
    embed_dim: int = 256
    queue_size: int = 65536
    momentum: float = 0.995
    temp: float = 0.07
    alpha: float = 0.4
    mlm_probability: float = 0.15
    distill: bool = True  # momentum distillation (MoD) in ITC and MLM, with weight alpha
    distill_mlm: bool = True  # False: MoD in ITC only (the ablation row "+MoD on ITC")
    decoder_layers: int = 6  # VQA answer decoder (initialised from the fusion layers)
    # The paper's initialisation: local files only (nothing is downloaded). "" = trained from scratch.
    init_vision: str = ""  # a DeiT / timm ViT checkpoint, e.g. deit_base_patch16_224-b5f2ef4d.pth
    init_text: str = ""  # a local bert-base-uncased folder (model.safetensors or pytorch_model.bin)
    # Special token ids of the tokenizer (BERT's by default; ShapesWorld's vocabulary keeps them).
    cls_token_id: int = 101
    sep_token_id: int = 102
    mask_token_id: int = 103
    # Objective switches, so that ablations are configuration rather than code.
    use_itc: bool = True
    use_itm: bool = True
    hard_negatives: bool = True  # ITM's negatives mined by in-batch similarity (False: uniform)
    use_mlm: bool = True
    # Fixes of known faults of the original. Default False = the original behaviour (for equality).
    fix_mlm_nan: bool = False  # MLM loss is 0 instead of NaN when no token was masked
    fix_duplicate_negatives: bool = False  # captions of the same image in a batch: positives, never negatives
    fix_vqa_double_count: bool = False  # VQA ranking counts log P(first token) once, not twice
    fix_momentum_init: bool = False  # copy loaded weights into momentum copies the file lacks (NLVR.py does not)
    grad_checkpointing: bool = False
    # Cross-attention keys/values computed once per image (or question) and shared by every text row and pass
    # that attends to it (plus: retrieval re-ranks without trailing padding, VQA ranking applies the vocabulary
    # head only where a token is predicted). False restores the path of before (same numbers, for A/B timing).
    share_cross_kv: bool = True
    # MLM's vocabulary head (and the teacher's) only at the masked positions, the only ones its loss reads (same
    # loss; False: every position, as the original).
    mlm_masked_only: bool = True


@dataclass
class DataConfig:
    """Where the data lives (the official JSON formats) and how images are read and augmented."""

    root: str = "data/shapesworld"
    train_file: str = ""  # relative to root, or absolute; "" = the task's ShapesWorld file
    shards: str = ""  # pre-training from WebDataset tar shards instead (a brace pattern, relative to root or absolute)
    val_file: str = ""  # evaluation split; "" = the task's ShapesWorld file
    answer_list: str = "answer_list.json"  # VQA candidate answers
    refer_dir: str = "refcoco+"  # RefCOCO+ refs / instances / dets
    k_test: int = 256  # retrieval: candidates re-ranked by ITM (COCO 256, Flickr 128); VQA: answers rescored
    stream_images: bool = False  # retrieval evaluation: re-encode each chunk of images as it is fused, not hold all
    gradcam_mode: str = "itm"  # grounding: "itm" (ITM score on a cross-attention layer) or "itc" (ViT block)
    gradcam_block: int = -1  # -1: the paper's 3rd fusion layer, else the last but one (itm); the last ViT block (itc)
    image_root: str = ""  # default: root
    tokenizer: str = ""  # a directory with vocab.txt or a cached model name; default: root/vocab
    max_words: int = 30
    max_tokens: int = 25  # tokenizer truncation, as the original's pre-training
    num_workers: int = 2
    randaugment: bool = True  # the original's RandomAugment(2, 7) (albef_lab/data/randaugment.py)
    fix_autocontrast: bool = False  # PIL's autocontrast; the original's wraps and whitens a channel whose min > 0
    crop_min_scale: float = 0.2  # random resized crop keeps 20-100 % of the image (the paper)
    flip_text: str = "ignore"  # ignore (the original: the caption stays as it is) | swap left/right | skip
    resize: str = "torch"  # training crops: torch (libjpeg-turbo, uint8 bicubic with PIL's kernel) | pil (the original)


@dataclass
class TrainConfig:
    """The paper's optimisation (AdamW, warm-up, cosine) and the run's bookkeeping."""

    output_dir: str = "runs/pretrain"
    epochs: int = 30
    max_steps: int = 0  # optimiser steps; 0 = epochs decide
    max_minutes: float = 0.0  # stop (and save) after this wall time; 0 = no limit
    batch_size: int = 64  # per process
    grad_accum: int = 1
    lr: float = 1e-4
    min_lr: float = 1e-5
    warmup_lr: float = 1e-5
    warmup_steps: int = 1000
    weight_decay: float = 0.02
    clip_grad: float = 0.0  # 0 = off
    fused_adamw: bool = True  # one vectorised AdamW kernel; false = torch's per-parameter loop (same update)
    precision: str = "fp32"  # fp32 | bf16 | fp16
    seed: int = 42
    log_every: int = 10
    eval_every: int = 0  # optimiser steps; 0 = at the end of each epoch
    save_every: int = 0  # optimiser steps; 0 = at the end of each epoch
    keep_last: int = 2
    tensorboard: bool = False
    device: str = "auto"  # auto | cpu | cuda
    threads: int = 0  # torch CPU threads; 0 = torch's default
    progress: bool = True


@dataclass
class Config:
    """Top-level configuration; `preset` records which preset it started from."""

    preset: str = "base"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)

    def plugins(self, task: str):
        """What a recipe adds to a run of `task` (`albef_lab.train.stages.Plugins`): nothing, for the paper."""
        return None


def _base() -> Config:
    return Config(preset="base", model=ModelConfig())


PRESETS: dict[str, Callable[[], Config]] = {"base": _base}
# keys of our model config that older checkpoints carry and this one no longer has (recipe switches that moved
# to the ShapesWorld recipe or were dropped); ignored when such a checkpoint is read
RETIRED_MODEL_KEYS = ("fix_false_negatives", "itm_random_steps", "itm_random_fraction", "itm_weight",
                      "itm_mining_softness", "itm_edited_fraction", "itm_edit_kinds")


def preset(name: str, presets: Mapping[str, Callable[[], Config]] | None = None) -> Config:
    presets = PRESETS if presets is None else presets
    if name not in presets:
        hint = " (the ShapesWorld recipe's presets: albef_lab.shapesworld.load_config)" if presets is PRESETS else ""
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(presets)}{hint}")
    return presets[name]()


def merge(obj: Any, values: dict, where: str = "") -> Any:
    """Set dataclass fields from a nested dict, refusing keys the dataclass does not have."""
    names = {f.name: f for f in dataclasses.fields(obj)}
    for key, value in values.items():
        path = f"{where}{key}"
        if key not in names:
            raise ConfigError(f"unknown config key {path!r}; valid keys here: {sorted(names)}")
        current = getattr(obj, key)
        if dataclasses.is_dataclass(current):
            if not isinstance(value, dict):
                raise ConfigError(f"config key {path!r} is a section; give a mapping, not {value!r}")
            merge(current, value, path + ".")
        else:
            setattr(obj, key, _coerce(value, current, path))
    return obj


def _coerce(value: Any, current: Any, path: str) -> Any:
    if current is None or value is None:
        return value
    if isinstance(current, bool):
        if not isinstance(value, bool):
            raise ConfigError(f"config key {path!r} expects true/false, got {value!r}")
        return value
    if isinstance(current, float) and isinstance(value, str):
        try:  # YAML reads "1e-3" as a string
            return float(value)
        except ValueError:
            pass
    if isinstance(current, float) and isinstance(value, int | float):
        return float(value)
    if isinstance(current, int) and isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(current, str) and isinstance(value, str):
        return value
    if isinstance(current, list | tuple) and isinstance(value, list | tuple):
        return type(current)(value)
    raise ConfigError(f"config key {path!r} expects {type(current).__name__}, got {value!r}")


def parse_overrides(items: list[str]) -> dict:
    """`["a.b=3", "c=true"]` -> `{"a": {"b": 3}, "c": True}` (values parsed as YAML)."""
    tree: dict = {}
    for item in items:
        if "=" not in item:
            raise ConfigError(f"override {item!r} must look like key=value (e.g. model.embed_dim=128)")
        key, raw = item.split("=", 1)
        node = tree
        parts = key.strip().split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        try:
            node[parts[-1]] = yaml.safe_load(raw)
        except yaml.YAMLError as e:
            raise ConfigError(f"override {item!r}: the value is not valid YAML ({e.problem})") from e
    return tree


def read_yaml(path: Path) -> dict:
    """A config file as a dict; syntax errors name the file, line and column."""
    try:
        values = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"{path}:{mark.line + 1}:{mark.column + 1}" if mark is not None else str(path)
        raise ConfigError(f"{where}: invalid YAML: {getattr(e, 'problem', None) or e}") from e
    if not isinstance(values, dict):
        raise ConfigError(f"{path}: a config file must be a mapping at the top level")
    return values


def load_config(path: str | Path | None = None, overrides: Sequence[str] | None = None,
                preset_name: str | None = None, *, presets: Mapping[str, Callable[[], Config]] | None = None,
                default: str = "base") -> Config:
    """Preset (from the argument, else the file's `preset:`, else `default`), then the file, then overrides.
    `presets`: where preset names are looked up (the paper's `PRESETS` by default)."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        values = read_yaml(path)
    values = copy.deepcopy(values)
    name = preset_name or values.pop("preset", None) or default
    values.pop("preset", None)
    cfg = preset(name, presets)
    merge(cfg, values)
    merge(cfg, parse_overrides(list(overrides or [])))
    return cfg


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def model_config_from_dict(values: dict) -> ModelConfig:
    """Our checkpoints' model config (keys an older version wrote and this one retired are left out)."""
    return merge(ModelConfig(), {k: v for k, v in values.items() if k not in RETIRED_MODEL_KEYS})


def model_config_from_reference(model_config: dict, bert_config: dict, vit: dict) -> ModelConfig:
    """Build our config from the original's yaml dict, BertConfig json and ViT constructor args."""
    text_fields = {f.name for f in dataclasses.fields(TextConfig)}
    text = TextConfig(**{k: v for k, v in bert_config.items() if k in text_fields})
    if bert_config.get("hidden_act", "gelu") != "gelu":
        raise ValueError(f"only exact GELU is supported, config has {bert_config['hidden_act']!r}")
    vision = VisionConfig(
        image_res=vit.get("img_size", model_config.get("image_res", 256)),
        patch_size=vit.get("patch_size", 16),
        width=vit.get("embed_dim", 768),
        depth=vit.get("depth", 12),
        num_heads=vit.get("num_heads", 12),
        mlp_ratio=float(vit.get("mlp_ratio", 4.0)),
        qkv_bias=vit.get("qkv_bias", True),
    )
    cfg = ModelConfig(vision=vision, text=text)
    for key in ("embed_dim", "queue_size", "momentum", "temp", "mlm_probability", "distill"):
        if key in model_config:
            setattr(cfg, key, type(getattr(cfg, key))(model_config[key]))
    return cfg
