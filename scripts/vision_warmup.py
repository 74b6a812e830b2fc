"""The supervised warm-up of the image encoder (`albef_lab.shapesworld.warmup`) on its own: the ViT is saved, in the
layout `model.init_vision` loads, so one warm-up can serve many pre-trainings (the recipe runs it
inside `albef-lab pretrain` instead: `shapesworld.warmup_minutes`).

    python scripts/vision_warmup.py --out runs/vit_warmup.pth [--data data/shapesworld] [--minutes 10] [key=value ...]
    albef-lab pretrain model.init_vision=runs/vit_warmup.pth shapesworld.freeze_vision=true shapesworld.warmup_minutes=0

The overrides are the config's (`model.vision.conv_stem=true` for the encoder docs/itm_recipe.md measured). The last
line printed is JSON: steps, and the held-out (test split) accuracy of each attribute with its majority class.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from albef_lab.shapesworld import load_config
from albef_lab.shapesworld.warmup import warm_up_to_file, warmup_config


def warmup(data: Path, out: Path, minutes: float, max_steps: int, overrides: list[str], place: bool = False,
           progress: bool = True) -> dict:
    cfg = load_config(None, [f"data.root={data}", *overrides], "tiny")
    return warm_up_to_file(cfg.model.vision, data, out, warmup_config(
        cfg.shapesworld, cfg.train, minutes=minutes, steps=max_steps, max_steps=0, place=place, progress=progress))


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, type=Path, help="where the ViT's weights go (.pth)")
    p.add_argument("--data", default="data/shapesworld", type=Path, help="a ShapesWorld folder (with scenes.json)")
    p.add_argument("--minutes", type=float, default=10.0, help="wall-time budget")
    p.add_argument("--steps", type=int, default=0, help="a number of steps instead of minutes")
    p.add_argument("--place", action="store_true", help="also each object's column and row (measured: worse)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    p.add_argument("overrides", nargs="*", help="config key=value (the tiny preset's: model.vision.*, shapesworld.*)")
    args = p.parse_args(argv)
    result = warmup(args.data, args.out, args.minutes, args.steps, args.overrides, args.place, not args.quiet)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
