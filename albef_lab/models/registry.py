"""One record per task of what the models' side must know: the model class, the default files, how a pre-training
file maps onto it. The engine's side of each task (its data and evaluation) is `albef_lab.train.tasks.TASKS`."""

from __future__ import annotations

from dataclasses import dataclass

from torch import nn

from albef_lab.models.albef import ALBEF
from albef_lab.models.tasks import ALBEFNLVR, ALBEFVE, ALBEFVQA, ALBEFPretrainNLVR, ALBEFRetrieval


@dataclass(frozen=True)
class TaskSpec:
    name: str
    model: type[nn.Module]
    files: tuple[str, str]  # training / evaluation annotation files by default (data.train_file / val_file)
    finetune_res: int | None = None  # the image size the original fine-tunes at (pre-training files: 256 px)
    new_keys: tuple[str, ...] = ()  # key prefixes a pre-training file cannot provide (new heads, buffers)
    expand_fusion: bool = False  # NLVR2: each fusion layer of the pre-trained model becomes two, one per image
    decoder_from_fusion: bool = False  # VQA: the answer decoder starts from the fusion layers


TASKS: dict[str, TaskSpec] = {s.name: s for s in (
    TaskSpec("pretrain", ALBEF, ("pretrain.json", "coco_val.json")),
    TaskSpec("retrieval", ALBEFRetrieval, ("coco_train.json", "coco_val.json"), 384, ("idx_queue",)),
    TaskSpec("grounding", ALBEFRetrieval, ("grounding_train.json", "grounding_test.json"), 384, ("idx_queue",)),
    TaskSpec("vqa", ALBEFVQA, ("vqa_train.json", "vqa_test.json"), 384, decoder_from_fusion=True),
    TaskSpec("nlvr", ALBEFNLVR, ("nlvr_train.json", "nlvr_val.json"), 384, ("cls_head.", "cls_head_m."),
             expand_fusion=True),
    TaskSpec("ve", ALBEFVE, ("ve_train.json", "ve_val.json"), 384, ("cls_head.", "cls_head_m.")),
    TaskSpec("pretrain_nlvr", ALBEFPretrainNLVR, ("pretrain.json", "coco_val.json"), new_keys=("ta_head.",),
             expand_fusion=True),
)}


def task_spec(name: str) -> TaskSpec:
    if name not in TASKS:
        raise ValueError(f"unknown task {name!r}; choose one of {sorted(TASKS)}")
    return TASKS[name]
