"""Configuration: dataclass presets (`tiny`, `base`), YAML files and `key=value` overrides.

A YAML file is a nested mapping onto `Config`; it may name a `preset` to start from. Overrides
use dotted keys (`model.text.hidden_size=64`) and YAML values (`train.precision=bf16`, `model.distill=false`).
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Sequence
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
    hard_negatives: bool = True
    use_mlm: bool = True
    # Fixes of known faults of the original. Default False = the original behaviour (for equality).
    fix_mlm_nan: bool = False  # MLM loss is 0 instead of NaN when no token was masked
    fix_duplicate_negatives: bool = False  # captions of the same image in a batch: positives, never negatives
    fix_vqa_double_count: bool = False  # VQA ranking counts log P(first token) once, not twice
    fix_momentum_init: bool = False  # copy loaded weights into momentum copies the file lacks (NLVR.py does not)
    # ITM never takes as a negative a pair the data knows to match (a caption true of another image of the
    # batch: ShapesWorld's scene graphs say so). The original mines such false negatives.
    fix_false_negatives: bool = False
    # A curriculum: ITM draws uniform negatives for this many steps before it mines hard ones (0 = the original).
    itm_random_steps: int = 0
    # After it: this fraction of ITM's negatives stay uniform, the rest mined (0 = the original: all mined).
    itm_random_fraction: float = 0.0
    itm_weight: float = 1.0  # ITM's weight in the pre-training loss (the original: 1, as ITC's and MLM's)
    # Mined negatives are drawn from softmax(similarity / temp / this): above 1, medium-hard negatives more often
    # than the hardest (1 = the original, ITC's own temperature).
    itm_mining_softness: float = 1.0
    # This share of the images take as ITM negative a one-word edit of their own caption that the scene graph
    # says is false ('a red circle' -> 'a blue circle', 'left' -> 'right'; `world.caption_edits`), in place of a
    # negative from the batch: the fine distinctions the most similar held-out captions test. Needs the data's
    # scene graphs (ShapesWorld); 0 = the original.
    itm_edited_fraction: float = 0.0
    # the edit kinds drawn from (colour, shape, size, count, direction, binding); empty: every kind
    itm_edit_kinds: list[str] = field(default_factory=list)
    grad_checkpointing: bool = False
    # Cross-attention keys/values computed once per image (or question) and shared by every text row and pass
    # that attends to it (plus: retrieval re-ranks without trailing padding, VQA ranking applies the vocabulary
    # head only where a token is predicted). False restores the path of before (same numbers, for A/B timing).
    share_cross_kv: bool = True


@dataclass
class DataConfig:
    """Where the pre-training data lives; a missing ShapesWorld is generated on first use."""

    root: str = "data/shapesworld"
    train_file: str = ""  # relative to root, or absolute; "" = the task's ShapesWorld file
    val_file: str = ""  # evaluation split; "" = the task's ShapesWorld file
    answer_list: str = "answer_list.json"  # VQA candidate answers
    refer_dir: str = "refcoco+"  # RefCOCO+ refs / instances / dets
    k_test: int = 256  # retrieval: candidates re-ranked by ITM (COCO 256, Flickr 128); VQA: answers rescored
    gradcam_mode: str = "itm"  # grounding: "itm" (ITM score on a cross-attention layer) or "itc" (ViT block)
    gradcam_block: int = -1  # -1: the paper's 3rd fusion layer, else the last but one (itm); the last ViT block (itc)
    image_root: str = ""  # default: root
    tokenizer: str = ""  # a directory with vocab.txt or a cached model name; default: root/vocab
    make_world: bool = True
    world_images: int = 3000
    world_res: int = 64
    world_seed: int = 0
    # what the world's captions say (albef_lab.data.world.CAPTION_KINDS); [listing, relation]: captions true of few
    # scenes (docs/itm_recipe.md). Read when the world is generated: give such a world its own data.root
    world_caption_kinds: list[str] = field(default_factory=lambda: ["listing", "count", "single", "relation"])
    noise: float = 0.0
    max_words: int = 30
    max_tokens: int = 25  # tokenizer truncation, as the original's pre-training
    num_workers: int = 2
    randaugment: bool = True  # the original's RandomAugment(2, 7) (albef_lab/data/randaugment.py)
    fix_autocontrast: bool = False  # PIL's autocontrast; the original's wraps and whitens a channel whose min > 0
    crop_min_scale: float = 0.2  # random resized crop keeps 20-100 % of the image (the paper)
    flip_text: str = "ignore"  # ignore (the original: the caption stays as it is) | swap left/right | skip


@dataclass
class TrainConfig:
    """The recipe (the paper's AdamW + warm-up + cosine) and the run's bookkeeping."""

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
    # the image encoder keeps its initial weights (model.init_vision): minutes of ALBEF erase the shape a
    # ShapesWorld-supervised encoder knows (docs/itm_recipe.md); false = the paper (everything trains)
    freeze_vision: bool = False
    vision_lr_scale: float = 1.0  # the image encoder's learning rate as a share of `lr` (1: the original's one lr)
    # pre-training only: first train the image encoder to name ShapesWorld's objects (shape, colour, size) from
    # the scene graphs (`train/vision_warmup.py`, our DeiT), inside `max_minutes`; it then stays frozen for the
    # pre-training (as with `freeze_vision`; fine-tuning trains it). 0 = off (the paper)
    vision_warmup_minutes: float = 0.0
    vision_warmup_steps: int = 0  # steps instead of minutes (0: minutes decide)
    # with minutes: stop at this many steps if the clock has not stopped the warm-up first, so that a machine fast
    # enough to make them gives the same encoder every run (0: the clock alone)
    vision_warmup_max_steps: int = 0
    vision_warmup_tokens: bool = False  # every token under an object names it (False: the box's mean token does)
    vision_warmup_positions: bool = False  # every token also names its own column and row (keeps where things are)
    vision_warmup_summary: bool = False  # [CLS] also names the image's (colour, shape) pairs (ITC reads [CLS])
    # pre-training on ShapesWorld only: after the last step, this many steps of ITM alone on the fusion layers and
    # the ITM head (nothing ITC reads moves) against each training image's `itm_finish_mined` most ITC-similar
    # captions that its scene graph says are false (`train/itm_finish.py`, docs/itm_recipe.md), inside
    # `max_minutes`. 0 = off (the paper)
    itm_finish_steps: int = 0
    itm_finish_mined: int = 8
    itm_finish_random: float = 0.5  # the share of its negatives that are random false captions instead
    itm_finish_lr: float = 1e-4
    # with `max_minutes`: pre-training stops this many minutes early, and the step gets them. Its first few hundred
    # steps lift the hardest-negative ITM by about 10 points, the pre-training's last hundred move ITC by 1-2, and
    # on a slow machine the clock otherwise leaves the step little or nothing (docs/itm_recipe.md, "Minutes kept for
    # step 3"). 0 = the step gets whatever the pre-training left
    itm_finish_minutes: float = 0.0
    progress: bool = True


@dataclass
class Config:
    """Top-level configuration; `preset` records which preset it started from."""

    preset: str = "base"
    model: ModelConfig = field(default_factory=ModelConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)


def _base() -> Config:
    return Config(preset="base", model=ModelConfig())


def _tiny() -> Config:
    """A few MB of weights: trains on ShapesWorld on a laptop CPU in minutes."""
    # From scratch, BERT's 0.02 init leaves every [CLS] nearly the same vector and ITC has nothing to pull on;
    # std ~ 1/sqrt(width) makes features distinct from the first step (the paper starts from DeiT and BERT).
    # The image encoder is ShapesWorld's stand-in for DeiT (docs/itm_recipe.md): a conv stem, trained for 3 of the
    # 9 minutes to name each object's shape, colour and size from the scene graphs (every token under an object,
    # not only their mean: ITC R@1 about doubles), then frozen for the rest of the pre-training; ALBEF's
    # objectives would wash shape out of it, and without shape the fused half cannot learn the fine distinctions.
    # Fine-tuning trains it again, as the paper does, at a tenth of the lr (at the full lr VQA fell 7 points).
    vision = VisionConfig(image_res=64, patch_size=8, width=128, depth=4, num_heads=4, init_std=0.1, conv_stem=True)
    text = TextConfig(
        vocab_size=512,
        hidden_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        intermediate_size=512,
        max_position_embeddings=64,
        fusion_layer=2,
        encoder_width=128,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        initializer_range=0.1,
    )
    # A faster teacher and a shorter queue than the paper's (0.995, 65,536): minutes, not days, of training.
    # The fused half (ITM) learns from scratch in minutes only with help (docs/itm_recipe.md has the evidence):
    # half of ITM's negatives stay uniform (mined ones alone hold the ITM loss at its constant guess), ITM weighs
    # 3x in the loss, and negatives that ShapesWorld's scene graphs show to be matches are never drawn.
    model = ModelConfig(vision=vision, text=text, embed_dim=64, queue_size=256, momentum=0.99,
                        decoder_layers=2,  # the VQA decoder starts from the 2 fusion layers
                        itm_random_fraction=0.5, itm_weight=3.0, fix_false_negatives=True)
    # Last, ITM alone on the fused half against each training image's most ITC-similar false captions: in-batch
    # mining leaves it accepting half of the hardest ones (docs/itm_recipe.md); ITC does not move.
    train = TrainConfig(output_dir="runs/pretrain_tiny", epochs=6, batch_size=64, lr=1e-3, min_lr=1e-5,
                        warmup_lr=1e-5, warmup_steps=50, max_minutes=9.0, log_every=5,
                        vision_warmup_minutes=3.5, vision_warmup_max_steps=1000, vision_warmup_tokens=True,
                        vision_lr_scale=0.1, itm_finish_steps=1000, itm_finish_minutes=1.0)
    # Small synthetic scenes: a crop may cut objects that the caption names, so crop gently, no RandAugment.
    # A flip swaps 'left' and 'right' in the caption, which relation captions need to stay true.
    data = DataConfig(randaugment=False, crop_min_scale=0.8, flip_text="swap")
    return Config(preset="tiny", model=model, data=data, train=train)


PRESETS = {"base": _base, "tiny": _tiny}

# What a preset changes for one task's training, under a config file and overrides (both still win).
# Tiny grounding: ITC Grad-CAM reads the image encoder's [CLS], which the warm-up never trains and pre-training
# keeps frozen; at the preset's 0.1 share of the lr, 120 grounding steps leave [CLS] where it was (best ViT block
# 43 %). At 3x the rest's lr they move it onto the named object (60.5-61.1 % over three seeds) and ITM Grad-CAM
# gains too (62.9 -> 68.3-70.4 %); at 10x ITM Grad-CAM falls (docs/itm_recipe.md, "Grounding moves [CLS]").
TASK_OVERRIDES: dict[tuple[str, str], tuple[str, ...]] = {("tiny", "grounding"): ("train.vision_lr_scale=3",)}


# NLVR2 first learns text assignment (`pretrain_nlvr`: is a caption about the left image, the right, or neither),
# as the paper does; the doubled fusion layers then start knowing which image each reads. On the tiny model,
# 120 NLVR2 steps reached 52.3-57.7 % over three seeds without it (shuffled images 48.0-55.7) and 66.0-68.7 % after
# 60 steps of it (docs/itm_recipe.md, "NLVR2 learns after text assignment")
TINY_TEXT_ASSIGNMENT_STEPS = 60


def tiny_finetune_overrides(steps: int) -> list[str]:
    """The tiny model's fine-tuning on ShapesWorld, shared by the learning tests, the README's table
    (`scripts/shapesworld_results.py`) and the demo's VQA: a step count, not a clock, so that any machine builds
    the same model; warm-up, then cosine to the last step, where it evaluates and saves once."""
    return [f"train.max_steps={steps}", f"train.eval_every={steps}", f"train.save_every={steps}",
            "train.max_minutes=0", "train.warmup_steps=20", "train.lr=3e-4", "model.fix_momentum_init=true"]


def tiny_finetune_config(root: str | Path, out: str | Path, steps: int, extra: Sequence[str] = (),
                         task: str | None = None) -> Config:
    """`tiny_finetune_overrides` on the world in `root`, writing to `out`, without a progress bar; `extra` last;
    with `task`, the preset's own changes for it (`TASK_OVERRIDES`) first."""
    return load_config(None, [f"data.root={root}", f"train.output_dir={out}", *tiny_finetune_overrides(steps),
                              "train.progress=false", *extra], "tiny", task)


def preset(name: str) -> Config:
    if name not in PRESETS:
        raise ConfigError(f"unknown preset {name!r}; choose one of {sorted(PRESETS)}")
    return PRESETS[name]()


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


def load_config(path: str | Path | None = None, overrides: list[str] | None = None,
                preset_name: str | None = None, task: str | None = None) -> Config:
    """Preset (from the argument, else the file's `preset:`, else `tiny`) with its changes for `task`
    (`TASK_OVERRIDES`), then the file, then overrides."""
    values: dict = {}
    if path is not None:
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        values = read_yaml(path)
    values = copy.deepcopy(values)
    name = preset_name or values.pop("preset", None) or "tiny"
    values.pop("preset", None)
    cfg = preset(name)
    merge(cfg, parse_overrides(list(TASK_OVERRIDES.get((name, task or ""), ()))))
    merge(cfg, values)
    merge(cfg, parse_overrides(overrides or []))
    return cfg


def to_dict(cfg: Any) -> dict:
    return dataclasses.asdict(cfg)


def model_config_from_dict(values: dict) -> ModelConfig:
    return merge(ModelConfig(), values)


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
