"""The ShapesWorld recipe's configuration: its own section (`shapesworld.*`) and the `tiny` preset.

ALBEF's objectives alone leave a tiny model trained from scratch for minutes with a fused half that cannot tell
ShapesWorld's fine distinctions apart (docs/itm_recipe.md). The recipe adds, on top of the paper's core: the world
itself, a supervised warm-up of the image encoder, negatives the scene graphs rule on, a heavier ITM loss and a
last step of ITM alone. `RecipeConfig.plugins` hands them to the engine.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from albef_lab.config import (
    PRESETS,
    Config,
    ConfigError,
    DataConfig,
    ModelConfig,
    TextConfig,
    TrainConfig,
    VisionConfig,
    merge,
    parse_overrides,
    read_yaml,
)
from albef_lab.config import load_config as load_core_config


@dataclass
class WorldConfig:
    """The world generated at `data.root` when its files are missing (`albef_lab.shapesworld.export`)."""

    make: bool = True
    images: int = 3000
    res: int = 64
    seed: int = 0
    noise: float = 0.0  # share of pre-training captions replaced by a wrong one
    noise_style: str = "replace"  # replace: a wholly wrong caption; web: partly right, its false words recorded
    # what captions say (world.CAPTION_KINDS); [listing, relation]: captions true of few scenes (docs/itm_recipe.md)
    caption_kinds: list[str] = field(default_factory=lambda: ["listing", "count", "single", "relation"])


@dataclass
class ShapesWorldConfig:
    """The recipe's switches. Each is off (0, false) in a plain run of the paper."""

    world: WorldConfig = field(default_factory=WorldConfig)
    # ITM's negatives: never a pair the scene graphs say matches; a share drawn uniformly, the rest mined
    known_matches: bool = False
    uniform_negatives: float = 0.0
    itm_weight: float = 1.0  # ITM's weight in the pre-training loss
    # the image encoder
    freeze_vision: bool = False  # keeps its initial weights (model.init_vision) in every task
    vision_lr_scale: float = 1.0  # its learning rate as a share of train.lr, fine-tuning included
    grounding_vision_lr_scale: float = 1.0  # the same for the grounding fine-tune
    # pre-training only: first the image encoder names each object's shape, colour and size (stage vision_warmup),
    # inside train.max_minutes; it then stays frozen for the pre-training
    warmup_minutes: float = 0.0
    warmup_steps: int = 0  # steps instead of minutes (0: minutes decide)
    warmup_max_steps: int = 0  # with minutes: stop here if the clock has not stopped it first
    warmup_tokens: bool = False  # every token under an object names it (False: the box's mean token does)
    warmup_positions: bool = False  # every token also names its own column and row
    warmup_summary: bool = False  # [CLS] also names the image's (colour, shape) pairs
    # pre-training only: last, ITM alone on each image's most ITC-similar false captions (stage itm_finish)
    itm_finish_steps: int = 0
    itm_finish_mined: int = 8
    itm_finish_random: float = 0.5  # the share of its negatives that are random false captions instead
    itm_finish_lr: float = 1e-4
    itm_finish_minutes: float = 0.0  # of train.max_minutes, kept for the step: pre-training stops that much early


@dataclass
class RecipeConfig(Config):
    """The paper's configuration plus the recipe's section."""

    shapesworld: ShapesWorldConfig = field(default_factory=ShapesWorldConfig)

    def plugins(self, task: str):
        from albef_lab.shapesworld.recipe import plugins

        return plugins(self, task)


def tiny() -> RecipeConfig:
    """A few MB of weights that learn ShapesWorld on a laptop CPU in minutes: the embedded default."""
    vision = VisionConfig(image_res=64, patch_size=8, width=128, depth=4, num_heads=4,
                          init_std=0.1,  # from scratch, features must differ from the first step (BERT's 0.02 do not)
                          conv_stem=True)  # a patch projection alone learns shape poorly at 8 px patches
    text = TextConfig(vocab_size=512, hidden_size=128, num_hidden_layers=4, num_attention_heads=4,
                      intermediate_size=512, max_position_embeddings=64, fusion_layer=2, encoder_width=128,
                      hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0, initializer_range=0.1)
    model = ModelConfig(vision=vision, text=text, embed_dim=64,
                        queue_size=256,  # minutes, not days: the queue turns over in a few steps
                        momentum=0.99,  # a teacher of a few hundred steps must move faster than 0.995
                        decoder_layers=2)  # the VQA decoder starts from the 2 fusion layers
    train = TrainConfig(output_dir="runs/pretrain_tiny", epochs=6, batch_size=64, lr=1e-3, min_lr=1e-5,
                        warmup_lr=1e-5, warmup_steps=50, max_minutes=9.0, log_every=5)
    # crop gently (a crop may cut an object the caption names), no RandAugment, a flip swaps left and right
    data = DataConfig(randaugment=False, crop_min_scale=0.8, flip_text="swap")
    recipe = ShapesWorldConfig(
        known_matches=True,  # a caption true of another image of the batch is no negative
        uniform_negatives=0.5,  # mined negatives alone hold the ITM loss at its constant guess
        itm_weight=3.0,  # the fused half learns slowest
        vision_lr_scale=0.1,  # fine-tuning at the full rate cost VQA 7 points
        grounding_vision_lr_scale=3.0,  # ITC Grad-CAM reads [CLS], which only grounding's fine-tune moves
        warmup_minutes=3.5, warmup_max_steps=1000, warmup_tokens=True,  # our DeiT: objects named by their tokens
        itm_finish_steps=1000, itm_finish_minutes=1.0)  # in-batch mining leaves half the hardest captions accepted
    return RecipeConfig(preset="tiny", model=model, data=data, train=train, shapesworld=recipe)


def base() -> RecipeConfig:
    """The paper's base model and training, with the recipe's section there but off."""
    return RecipeConfig(preset="base", **{k: getattr(PRESETS["base"](), k) for k in ("model", "data", "train")})


RECIPE_PRESETS = {"tiny": tiny, "base": base}

# keys that moved into the recipe's section (an old override or file names them): where each is now
MOVED = {"model.fix_false_negatives": "shapesworld.known_matches",
         "model.itm_random_fraction": "shapesworld.uniform_negatives", "model.itm_weight": "shapesworld.itm_weight",
         "train.freeze_vision": "shapesworld.freeze_vision", "train.vision_lr_scale": "shapesworld.vision_lr_scale",
         **{f"train.vision_warmup_{k}": f"shapesworld.warmup_{k}"
            for k in ("minutes", "steps", "max_steps", "tokens", "positions", "summary")},
         **{f"train.itm_finish_{k}": f"shapesworld.itm_finish_{k}"
            for k in ("steps", "mined", "random", "lr", "minutes")},
         "data.make_world": "shapesworld.world.make", "data.world_images": "shapesworld.world.images",
         "data.world_res": "shapesworld.world.res", "data.world_seed": "shapesworld.world.seed",
         "data.noise": "shapesworld.world.noise", "data.world_caption_kinds": "shapesworld.world.caption_kinds"}
DROPPED = ("model.itm_random_steps", "model.itm_mining_softness", "model.itm_edited_fraction",
           "model.itm_edit_kinds")


def _check_moved(values: dict, where: str) -> None:
    flat = _flatten(values)
    for key in flat:
        if key in MOVED:
            raise ConfigError(f"{where}: {key} is now {MOVED[key]}")
        if key in DROPPED:
            raise ConfigError(f"{where}: {key} was tried and not adopted, and is gone (docs/itm_recipe.md)")


def _flatten(values: dict, prefix: str = "") -> list[str]:
    keys = []
    for k, v in values.items():
        keys += _flatten(v, f"{prefix}{k}.") if isinstance(v, dict) else [f"{prefix}{k}"]
    return keys


def with_overrides(cfg: RecipeConfig, overrides: Sequence[str] = ()) -> RecipeConfig:
    """`key=value` overrides (a user's, last) applied to a config built in code."""
    _check_moved(parse_overrides(list(overrides)), "override")
    return merge(cfg, parse_overrides(list(overrides)))


def load_config(path: str | Path | None = None, overrides: Sequence[str] | None = None,
                preset_name: str | None = None) -> RecipeConfig:
    """`albef_lab.config.load_config` with the recipe's presets (`tiny`, the default, and `base`); a key that
    moved into the recipe's section is named with its new name."""
    if path is not None and Path(path).is_file():
        _check_moved(read_yaml(Path(path)), str(path))
    _check_moved(parse_overrides(list(overrides or [])), "override")
    return load_core_config(path, overrides, preset_name, presets=RECIPE_PRESETS, default="tiny")


# NLVR2 first learns text assignment (`pretrain_nlvr`: is a caption about the left image, the right, or neither),
# as the paper does: the doubled fusion layers then start knowing which image each reads
TEXT_ASSIGNMENT_STEPS = 60


def finetune_config(root: str | Path, out: str | Path, steps: int, extra: Sequence[str] = ()) -> RecipeConfig:
    """The tiny model's fine-tuning on the world in `root`: a step count, not a clock, so that any machine builds the
    same model; warm-up, then cosine to the last step, where it evaluates and saves once. `extra` last."""
    cfg = tiny()
    cfg.data.root, cfg.train.output_dir = str(root), str(out)
    t = cfg.train
    t.max_steps = t.eval_every = t.save_every = steps
    t.max_minutes, t.warmup_steps, t.lr, t.progress = 0.0, 20, 3e-4, False
    cfg.model.fix_momentum_init = True  # NLVR2 from text assignment: the momentum copies start from the file
    return with_overrides(cfg, extra)
