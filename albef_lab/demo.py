"""The demo's models and data: built once on the embedded default (ShapesWorld, tiny preset), then reused.

`albef-lab demo` / `python app/main.py` call `workbench_from_args`; what the tabs compute is `albef_lab.inference`.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

from albef_lab.config import Config
from albef_lab.data.tokenizer import load_tokenizer
from albef_lab.inference import Loaded, Workbench, folder_images, load_checkpoint
from albef_lab.shapesworld.config import finetune_config, load_config, tiny, with_overrides

# On 2 CPU cores; world generation and the two evaluations come on top (~1 minute).
PRETRAIN_MINUTES = 9.0  # the tiny recipe's whole run: the image encoder's warm-up and the last ITM step included
# The VQA fine-tune is a step count, so every machine that makes them builds the same model; the minutes only cap
# a machine far slower than ours (its clock warning is then true). A clock alone ("until the minutes") asked
# thousands of steps it could never make, and warned of a cut on every machine.
VQA_STEPS = 120
VQA_MINUTES = 6.0


@dataclass
class DemoPaths:
    runs: Path
    data: Path

    @property
    def pretrain(self) -> Path:
        return self.runs / "pretrain" / "model.pth"

    @property
    def vqa(self) -> Path:
        return self.runs / "vqa" / "model.pth"

    @property
    def cache(self) -> Path:
        return self.runs / "cache"


def stage_config(paths: DemoPaths, stage: str, minutes: float, extra: list[str] | None = None) -> Config:
    """The tiny preset on the demo's world; `minutes` caps the stage's wall time, whatever `extra` says."""
    cfg = tiny()
    cfg.data.root, cfg.train.output_dir = str(paths.data), str(paths.runs / stage)
    cfg = with_overrides(cfg, extra or [])
    cfg.train.max_minutes = minutes
    return cfg


def vqa_stage_config(paths: DemoPaths, progress: bool = True, steps: int = VQA_STEPS,
                     extra: list[str] | None = None) -> Config:
    """The demo's VQA fine-tune: the tiny fine-tuning recipe (the learning tests'), capped at `VQA_MINUTES`.
    `extra` comes after the recipe (a test's smaller model)."""
    cfg = finetune_config(paths.data, paths.runs / "vqa", steps)
    cfg.train.progress, cfg.data.k_test = progress, 16
    cfg = with_overrides(cfg, extra or [])
    cfg.train.max_minutes = VQA_MINUTES
    return cfg


def ensure_demo_models(paths: DemoPaths, progress: bool = True) -> None:
    """Build what is missing: ShapesWorld (with the pre-training), the tiny pre-training, a short VQA fine-tune."""
    from albef_lab.train.engine import train

    t0 = time.perf_counter()
    if not paths.pretrain.is_file():
        print(f"[demo] pre-training the tiny model on ShapesWorld (about {PRETRAIN_MINUTES:.0f} minutes) ...")
        cfg = stage_config(paths, "pretrain", PRETRAIN_MINUTES)
        cfg.train.progress = progress
        train(cfg)
    if not paths.vqa.is_file():
        print(f"[demo] fine-tuning VQA ({VQA_STEPS} steps) ...")
        train(vqa_stage_config(paths, progress), "vqa", init=str(paths.pretrain))
    if time.perf_counter() - t0 > 1:
        print(f"[demo] models ready in {(time.perf_counter() - t0) / 60:.1f} minutes")


def world_texts(data: Path) -> tuple[list[str], list[str], list[Path]]:
    """ShapesWorld's test captions, answer list and test images (the demo's caption set, answers, gallery)."""
    test = json.loads((data / "coco_test.json").read_text())
    captions = list(dict.fromkeys(c for e in test for c in e["caption"]))
    answers = json.loads((data / "answer_list.json").read_text())
    images = list(dict.fromkeys(data / e["image"] for e in test))
    return captions, answers, images


def build_workbench(checkpoints: list[str], preset_name: str = "base", tokenizer: str | None = None,
                    gallery: str | None = None, runs: str = "runs/demo", data: str = "data/shapesworld",
                    device: str = "cpu", progress: bool = True) -> Workbench:
    """The demo's workbench: the given checkpoints (ours or official), or the embedded default built on first use."""
    paths = DemoPaths(Path(runs), Path(data))
    if not checkpoints:
        ensure_demo_models(paths, progress)
        checkpoints = [str(paths.pretrain), str(paths.vqa)]
    matcher, vqa = None, None
    for c in checkpoints:
        loaded: Loaded = load_checkpoint(c, load_config(None, [], preset_name).model)
        if loaded.task == "vqa":
            vqa = loaded
        else:
            matcher = loaded
    tok_dir = tokenizer or (paths.data / "vocab")
    captions, answers, images = world_texts(paths.data) if (paths.data / "coco_test.json").is_file() else ([], [],
                                                                                                           [])
    wb = Workbench(load_tokenizer(tok_dir), matcher, vqa, captions=captions, answer_list=answers, device=device)
    wb.load_world_proposals(paths.data / "refcoco+")
    if matcher is not None:
        files = folder_images(gallery) if gallery else images
        if files:
            wb.index_gallery(files, cache_dir=paths.cache, progress=progress)
    return wb


def app_module(name: str = "main"):
    """A module of the app (`app/main.py`, `app/screens.py`) of the checkout this package is installed from
    (pip install -e .), imported by path: the app is no package, so no `ModuleNotFoundError: app`."""
    import importlib.util
    import sys

    path = Path(__file__).resolve().parents[1] / "app" / f"{name}.py"
    if not path.is_file():
        raise FileNotFoundError(f"the demo's UI ({path}) is not there: run `albef-lab demo` from an editable "
                                "install of the repository (pip install -e .)")
    key = f"albef_lab_app_{name}"
    if key not in sys.modules:
        spec = importlib.util.spec_from_file_location(key, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[key] = module
        spec.loader.exec_module(module)
    return sys.modules[key]
