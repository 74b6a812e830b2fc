"""One record per task: everything the factory, the checkpoint mapping, the engine and the CLI need to know."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from albef_lab.models.albef import ALBEF
from albef_lab.models.tasks import ALBEFNLVR, ALBEFVE, ALBEFVQA, ALBEFPretrainNLVR, ALBEFRetrieval


@dataclass(frozen=True)
class TaskSpec:
    name: str
    model: type[nn.Module]
    trainer: str  # class name in albef_lab.train.tasks (looked up there: models never import train)
    files: tuple[str, str]  # ShapesWorld training / evaluation annotations (every one is a config key too)
    finetune_res: int | None = None  # the image size the original fine-tunes at (pre-training files: 256 px)
    new_keys: tuple[str, ...] = ()  # key prefixes a pre-training file cannot provide (new heads, buffers)
    expand_fusion: bool = False  # NLVR2: each fusion layer of the pre-trained model becomes two, one per image


TASKS: dict[str, TaskSpec] = {s.name: s for s in (
    TaskSpec("pretrain", ALBEF, "Task", ("pretrain.json", "coco_val.json")),
    TaskSpec("retrieval", ALBEFRetrieval, "RetrievalTask", ("coco_train.json", "coco_val.json"), 384,
             ("idx_queue",)),
    TaskSpec("grounding", ALBEFRetrieval, "GroundingTask", ("grounding_train.json", "grounding_test.json"), 384,
             ("idx_queue",)),
    TaskSpec("vqa", ALBEFVQA, "VQATask", ("vqa_train.json", "vqa_test.json"), 384),
    TaskSpec("nlvr", ALBEFNLVR, "NLVRTask", ("nlvr_train.json", "nlvr_val.json"), 384, ("cls_head.", "cls_head_m."),
             expand_fusion=True),
    TaskSpec("ve", ALBEFVE, "VETask", ("ve_train.json", "ve_val.json"), 384, ("cls_head.", "cls_head_m.")),
    TaskSpec("pretrain_nlvr", ALBEFPretrainNLVR, "TextAssignmentTask", ("pretrain.json", "coco_val.json"),
             new_keys=("ta_head.",), expand_fusion=True),
)}


def task_spec(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]
