"""The recipe as the engine sees it: for each run, the world to make, the task, the stages and which parameters
train at what rate (`albef_lab.train.stages.Plugins`)."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

from albef_lab.data.formats import resolve
from albef_lab.models.registry import task_spec
from albef_lab.shapesworld.config import TEXT_ASSIGNMENT_STEPS, finetune_config
from albef_lab.shapesworld.export import ensure_world
from albef_lab.shapesworld.itm_finish import FinishConfig, ITMFinish
from albef_lab.shapesworld.tasks import TASKS
from albef_lab.shapesworld.warmup import VisionWarmup, warmup_config
from albef_lab.train.stages import Plugins


def plugins(cfg, task: str) -> Plugins:
    """What `cfg.shapesworld` adds to a run of `task`."""
    sw, t, d = cfg.shapesworld, cfg.train, cfg.data

    def prepare(trainer) -> None:  # the world, generated when missing (rank 0 writes, the others wait)
        from albef_lab import distributed as D

        make_world(cfg, task, progress=t.progress and trainer.main, main=trainer.main, barrier=D.barrier)

    stages, frozen = [], ()
    if task == "pretrain":
        if sw.warmup_minutes or sw.warmup_steps:
            stages.append(VisionWarmup(warmup_config(sw, t), d.root))
            frozen = ("visual_encoder.",)  # trained on, ALBEF's objectives wash the objects out of it in minutes
        if sw.itm_finish_steps:
            stages.append(ITMFinish(FinishConfig(steps=sw.itm_finish_steps, mined=sw.itm_finish_mined,
                                                 random_share=sw.itm_finish_random, lr=sw.itm_finish_lr,
                                                 weight_decay=t.weight_decay, batch_size=t.batch_size, seed=t.seed,
                                                 progress=t.progress), sw.itm_finish_minutes))
    if sw.freeze_vision:
        frozen = ("visual_encoder.",)
    scale = sw.grounding_vision_lr_scale if task == "grounding" else sw.vision_lr_scale
    return Plugins(prepare=prepare, task=TASKS.get(task), stages=stages,
                   frozen=frozen, lr_scales={"visual_encoder.": scale} if scale != 1.0 else {})


def make_world(cfg, task: str = "pretrain", progress: bool = True, main: bool = True,
               barrier: Callable[[], None] | None = None) -> Path:
    """The world at `cfg.data.root` as `cfg.shapesworld.world` describes it, generated when the task's training
    file is missing; returns its folder."""
    d = cfg.data
    ensure_world(d.root, cfg.shapesworld.world, resolve(d.root, d.train_file or task_spec(task).files[0]),
                 progress=progress, main=main, barrier=barrier)
    return Path(d.root)


def finetune(task: str, root: str | Path, out: str | Path, init: str | Path, steps: int, extra: Sequence[str] = (),
             text_assignment_steps: int = TEXT_ASSIGNMENT_STEPS) -> tuple[dict, object]:
    """The tiny model's fine-tuning of `task` on ShapesWorld (`finetune_config`), as the learning tests and the
    results table run it. NLVR2 first learns text assignment (`pretrain_nlvr`, in OUT/text_assignment; `extra`
    applies to it too) and starts from it, as the paper's. Returns (the task's result, its config)."""
    from albef_lab.train.engine import train

    if task == "nlvr" and text_assignment_steps:
        finetune("pretrain_nlvr", root, Path(out) / "text_assignment", init, text_assignment_steps, extra)
        init = Path(out) / "text_assignment" / "model.pth"
    cfg = finetune_config(root, out, steps, extra)
    return train(cfg, task, init=str(init)), cfg
