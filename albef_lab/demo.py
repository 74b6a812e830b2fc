"""The demo's models and data: built once on the embedded default (ShapesWorld, tiny preset), then reused.

`albef-lab demo` / `python app/main.py` call `workbench_from_args`; what the tabs compute is `albef_lab.inference`.
"""

from __future__ import annotations

import json
import threading
import time
import traceback
from dataclasses import dataclass
from pathlib import Path

from albef_lab.config import Config
from albef_lab.data.tokenizer import load_tokenizer
from albef_lab.inference import InputError, Loaded, Workbench, folder_images, load_checkpoint
from albef_lab.shapesworld.config import finetune_config, load_config, tiny, with_overrides
from albef_lab.train.plot import read_metrics

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


SAVE_EVERY = 50  # steps between the build's checkpoints: a restart resumes from the last one


def ensure_world(paths: DemoPaths, progress: bool = True) -> None:
    """ShapesWorld, generated when missing (seconds): the gallery and the examples come from it."""
    from albef_lab.shapesworld.recipe import make_world

    make_world(stage_config(paths, "pretrain", PRETRAIN_MINUTES), progress=progress)


def pretrain_demo_model(paths: DemoPaths, progress: bool = True, extra: list[str] | None = None) -> None:
    """The tiny pre-training, resumed from its last checkpoint when an earlier build was stopped (`extra`: config
    overrides, e.g. a smaller model)."""
    from albef_lab.train.engine import train

    if not paths.pretrain.is_file():
        print(f"[demo] pre-training the tiny model on ShapesWorld (about {PRETRAIN_MINUTES:.0f} minutes) ...")
        cfg = stage_config(paths, "pretrain", PRETRAIN_MINUTES, [f"train.save_every={SAVE_EVERY}", *(extra or [])])
        cfg.train.progress = progress
        train(cfg, resume="auto")


def finetune_demo_vqa(paths: DemoPaths, progress: bool = True, extra: list[str] | None = None) -> None:
    from albef_lab.train.engine import train

    if not paths.vqa.is_file():
        print(f"[demo] fine-tuning VQA ({VQA_STEPS} steps) ...")
        cfg = vqa_stage_config(paths, progress, extra=[f"train.save_every={SAVE_EVERY}", *(extra or [])])
        train(cfg, "vqa", init=str(paths.pretrain), resume="auto")


def ensure_demo_models(paths: DemoPaths, progress: bool = True) -> None:
    """Build what is missing: ShapesWorld, the tiny pre-training, a short VQA fine-tune."""
    t0 = time.perf_counter()
    ensure_world(paths, progress)
    pretrain_demo_model(paths, progress)
    finetune_demo_vqa(paths, progress)
    if time.perf_counter() - t0 > 1:
        print(f"[demo] models ready in {(time.perf_counter() - t0) / 60:.1f} minutes")


@dataclass
class Stage:
    """One step of the demo's build as the page shows it."""

    name: str
    label: str
    unlocks: str  # the tabs that need it
    state: str = "waiting"  # waiting | running | done | failed
    started: float = 0.0
    detail: str = ""


class DemoBuild:
    """The embedded default's models, built in a background thread while the page is already served.

    The page polls `status_markdown`; every computation asks `workbench(need)`, which answers once the model it
    needs is loaded (`matcher`: retrieval, Grad-CAM, grounding, classify after pre-training; `vqa` after its
    fine-tuning) and otherwise raises InputError with the build's progress. A build stopped half-way resumes from
    its last checkpoint on the next start."""

    def __init__(self, paths: DemoPaths, gallery: str | None = None, device: str = "cpu", progress: bool = False,
                 extra: list[str] | None = None, steps: tuple = (pretrain_demo_model, finetune_demo_vqa)):
        self.paths, self.gallery, self.device, self.progress = paths, gallery, device, progress
        self.extra = list(extra or [])  # config overrides for both stages (a smaller model)
        self.pretrain_step, self.vqa_step = steps
        self.stages = {"pretrain": Stage("pretrain", f"pre-training (about {PRETRAIN_MINUTES:.0f} minutes)",
                                         "Retrieval, Grad-CAM, Grounding, Classify"),
                       "vqa": Stage("vqa", f"VQA fine-tuning ({VQA_STEPS} steps)", "VQA")}
        self.wb: Workbench | None = None
        self.error: str | None = None
        self.thread = threading.Thread(target=self._run, name="demo-build", daemon=True)

    def start(self) -> DemoBuild:
        self.thread.start()
        return self

    def _run(self) -> None:
        stage = self.stages["pretrain"]
        try:
            stage.state, stage.started = "running", time.monotonic()
            self.pretrain_step(self.paths, self.progress, self.extra)
            matcher = load_checkpoint(self.paths.pretrain)
            wb = demo_workbench(self.paths, matcher, None, gallery=self.gallery, device=self.device,
                                progress=self.progress)
            if wb.gallery and wb.gallery.skipped:
                print(f"[demo] gallery: skipped {len(wb.gallery.skipped)} unreadable file(s), e.g. "
                      f"{next(iter(wb.gallery.skipped.items()))}")
            self.wb = wb
            stage.state = "done"
            stage = self.stages["vqa"]
            stage.state, stage.started = "running", time.monotonic()
            self.vqa_step(self.paths, self.progress, self.extra)
            vqa = load_checkpoint(self.paths.vqa)
            vqa.model.to(self.wb.device).eval()
            self.wb.vqa = vqa
            stage.state = "done"
        except Exception as e:  # the page says so, and the tabs that need the model
            stage.state, stage.detail = "failed", f"{type(e).__name__}: {e}"
            self.error = f"the demo's build failed in {stage.label}: {stage.detail} (the server's log has the rest)"
            traceback.print_exc()

    def layers(self) -> tuple[list[int], int]:
        """The demo model's cross-attention layers and the default Grad-CAM layer, known before it is trained."""
        from albef_lab.models.factory import create_model
        from albef_lab.viz.gradcam import cross_attention_layers, default_itm_layer

        cfg = stage_config(self.paths, "pretrain", PRETRAIN_MINUTES, self.extra)
        model = create_model("pretrain", cfg.model, device="meta")
        return cross_attention_layers(model), default_itm_layer(model)

    @property
    def done(self) -> bool:
        return self.error is not None or all(s.state == "done" for s in self.stages.values())

    def progress_of(self, stage: Stage) -> str:
        if stage.state == "done":
            return "ready"
        if stage.state == "failed":
            return f"failed: {stage.detail}"
        if stage.state == "waiting":
            return "waiting"
        minutes = (time.monotonic() - stage.started) / 60
        step = last_step(self.paths.runs / stage.name / "metrics.jsonl")
        if stage.name == "vqa":
            return f"step {step} of {VQA_STEPS} ({100 * step / VQA_STEPS:.0f} %), {minutes:.1f} min"
        share = min(99, 100 * minutes / PRETRAIN_MINUTES)  # a run of a fixed wall time: the clock is its progress
        return f"{minutes:.1f} of about {PRETRAIN_MINUTES:.0f} min ({share:.0f} %)" + (f", step {step}" if step else "")

    def status_markdown(self) -> str:
        mark = {"done": "✅", "running": "⏳", "waiting": "…", "failed": "❌"}
        rows = [f"- {mark[s.state]} **{s.label}**: {self.progress_of(s)} — unlocks {s.unlocks}"
                for s in self.stages.values()]
        head = "The models are ready." if self.done and not self.error else (
            self.error or "Building the demo's models; each tab works as soon as its model is ready.")
        return "\n".join([head, *rows])

    def workbench(self, need: str = "matcher") -> Workbench:
        """The workbench once the model `need` (matcher | vqa) is loaded; else InputError with the build's progress."""
        if self.error:
            raise InputError(self.error)
        wb = self.wb
        if wb is not None and (need == "matcher" or wb.vqa is not None):
            return wb
        stage = self.stages["pretrain" if need == "matcher" or wb is None else "vqa"]
        raise InputError(f"the model is still being built: {stage.label}, {self.progress_of(stage)}; "
                         "the page's status shows when it is ready")


def last_step(metrics: Path) -> int:
    """The last optimiser step a run (perhaps still writing) logged; 0 before its first."""
    rows = read_metrics(metrics, running=True) if metrics.is_file() else []
    return next((int(r["step"]) for r in reversed(rows) if "step" in r), 0)


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
    return demo_workbench(paths, matcher, vqa, tokenizer, gallery, device, progress)


def demo_workbench(paths: DemoPaths, matcher: Loaded | None, vqa: Loaded | None, tokenizer: str | None = None,
                   gallery: str | None = None, device: str = "cpu", progress: bool = True) -> Workbench:
    """A workbench on loaded models with the world's captions, answers, proposals and gallery (or `gallery`)."""
    tok_dir = tokenizer or (paths.data / "vocab")
    has_world = (paths.data / "coco_test.json").is_file()
    captions, answers, images = world_texts(paths.data) if has_world else ([], [], [])
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
