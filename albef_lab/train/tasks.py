"""What the engine needs to know about each task: data, one training step, evaluation.

The engine (engine.py) is the same for pre-training and every downstream task; a Task supplies the
training set and its collate function, turns a batch into losses, and evaluates a model.
"""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from albef_lab.config import Config
from albef_lab.data import datasets as DS
from albef_lab.data.formats import NLVR, VE, VQA_TRAIN, read_entries, read_json, resolve
from albef_lab.data.shards import ShardPretrainDataset
from albef_lab.data.tokenizer import Tokenizer
from albef_lab.data.transforms import ImageTextTransform, eval_transform
from albef_lab.eval.controls import text_only_accuracy, vqa_by_type, vqa_text_only_accuracy
from albef_lab.eval.retrieval import encode_split, recall_metrics, rerank_scores, zero_shot_eval
from albef_lab.eval.vqa import majority_answer_accuracy, vqa_accuracy
from albef_lab.files import write_text_atomic
from albef_lab.models.base import eval_mode
from albef_lab.models.registry import TaskSpec, task_spec
from albef_lab.models.tasks import RandomSource


class Task:
    """Pre-training (the base of every task): image-caption pairs, zero-shot retrieval as evaluation."""

    name = "pretrain"  # the key of the task's record in albef_lab.models.registry
    primary = "r_mean"  # the metric that decides the best checkpoint
    collate = None

    def __init__(self, cfg: Config, tokenizer: Tokenizer, out_dir: str | Path | None = None, blind: str = ""):
        self.cfg, self.tok = cfg, tokenizer
        self.out_dir = Path(out_dir) if out_dir else None  # where evaluations write their result files
        self.blind = blind  # evaluate a control instead: images shuffled or blanked (`BlindImages`)
        d = cfg.data
        train_file, val_file = self.spec.files
        self.train_file = resolve(d.root, d.train_file or train_file)
        self.val_file = resolve(d.root, d.val_file or val_file)
        self.image_root = d.image_root or d.root
        if d.shards and train_file != "pretrain.json":
            raise ValueError(f"data.shards holds image-caption pairs for pre-training; {self.name} reads "
                             f"data.train_file ({train_file} in the official format)")
        self.res = cfg.model.vision.image_res

    @property
    def spec(self) -> TaskSpec:
        return task_spec(self.name)

    def train_transform(self) -> ImageTextTransform:
        d = self.cfg.data
        return ImageTextTransform(self.res, train=True, scale=(d.crop_min_scale, 1.0), randaugment=d.randaugment,
                                  flip_text=d.flip_text, fix_autocontrast=d.fix_autocontrast, resize=d.resize)

    def train_set(self) -> Dataset:
        d = self.cfg.data
        if d.shards:
            return ShardPretrainDataset(str(resolve(d.root, d.shards)), self.train_transform(), d.max_words)
        return DS.PretrainDataset(self.train_file, self.image_root, self.train_transform(), d.max_words)

    def text(self, texts, device: torch.device, max_length: int | None = None) -> tuple[Tensor, Tensor]:
        ids, mask = self.tok(list(texts), max_length=max_length or self.cfg.data.max_tokens)
        return ids.to(device), mask.to(device)

    def forward(self, net: nn.Module, batch, alpha: float, gen: torch.Generator, device: torch.device) -> dict:
        images, captions, image_ids = batch
        same = image_ids.to(device) if self.cfg.model.fix_duplicate_negatives else None
        ids, mask = self.text(captions, device)
        return net(images.to(device, non_blocking=True), ids, mask, alpha, generator=gen, image_ids=same)

    def evaluate(self, model: nn.Module, device: torch.device) -> dict:
        if not self.val_file.is_file():
            return {}
        val = self.retrieval_val()
        return zero_shot_eval(model, val, self.tok, device, truth=self.truth(val))

    def truth(self, val: DS.RetrievalEvalDataset) -> Tensor | None:
        """[images, texts] bool: caption true of image, where the data knows it (keeps such captions out of the
        held-out ITM's negatives). Official data does not: None."""
        return None

    def retrieval_val(self) -> DS.RetrievalEvalDataset:
        """The held-out images with all their captions (COCO val/test layout)."""
        return self.eval_set(DS.RetrievalEvalDataset(self.val_file, self.image_root, eval_transform(self.res),
                                                     self.cfg.data.max_words))

    def eval_set(self, ds: Dataset) -> Dataset:
        """An evaluation set as it is, or its image-blind control when `self.blind` says so."""
        return DS.BlindImages(ds, self.blind, self.cfg.train.seed) if self.blind else ds


class RetrievalTask(Task):
    name = "retrieval"

    def train_set(self) -> Dataset:
        return DS.RetrievalTrainDataset(self.train_file, self.image_root, self.train_transform(),
                                        self.cfg.data.max_words)

    def negatives(self):
        """Who draws ITM's negatives (None: the model, as `model.hard_negatives` says); a recipe may choose."""
        return None

    def forward(self, net, batch, alpha, gen, device):
        images, captions, image_ids = batch
        ids, mask = self.text(captions, device)
        return net(images.to(device), ids, mask, alpha, image_ids=image_ids.to(device), generator=gen,
                   negatives=self.negatives())

    @torch.no_grad()
    def evaluate(self, model, device):
        val = self.retrieval_val()
        image_states, image_feat, text_states, text_atts, text_feat = encode_split(
            model, val, self.tok, device, stream_images=self.cfg.data.stream_images)
        with eval_mode(model):
            s_i2t, s_t2i = rerank_scores(model, image_states, image_feat, text_states, text_atts, text_feat,
                                         self.cfg.data.k_test)
        txt2img = torch.tensor([val.txt2img[t] for t in range(len(val.text))], device=device)
        itc = recall_metrics(image_feat @ text_feat.t(), txt2img)
        # reranked: ITM scores inside the top-k; the ITC order decides outside it (as -100 entries tie)
        out = recall_metrics(s_i2t, txt2img, scores_t2i=s_t2i)
        out.update({f"itc_{k}": v for k, v in itc.items()}, n_images=len(val))
        return out


class VQATask(Task):
    name = "vqa"
    primary = "vqa_acc"

    def train_set(self):
        return DS.VQADataset(self.train_file, self.image_root, self.train_transform(), train=True,
                             max_words=self.cfg.data.max_words)

    collate = staticmethod(DS.vqa_collate)

    def answers(self, texts, device):
        return self.text([a + "[SEP]" for a in texts], device, max_length=self.cfg.data.max_tokens)

    def forward(self, net, batch, alpha, gen, device):
        images, questions, answers, weights, k = batch
        q_ids, q_mask = self.text(questions, device)
        a_ids, a_mask = self.answers(answers, device)
        loss = net(images.to(device), q_ids, q_mask, a_ids, a_mask, k, weights.to(device), alpha)
        return {"loss": loss}

    @torch.no_grad()
    def evaluate(self, model, device):
        d = self.cfg.data
        test = self.eval_set(DS.VQADataset(self.val_file, self.image_root, eval_transform(self.res), train=False,
                                           max_words=d.max_words))
        answer_list = read_json(resolve(d.root, d.answer_list))
        a_ids, a_mask = self.answers(answer_list, device)
        results, score, counted = [], 0.0, 0
        with eval_mode(model):
            for images, questions, qids in DataLoader(test, batch_size=64, shuffle=False):
                q_ids, q_mask = self.text(questions, device)
                topk, probs = model.rank_answers(images.to(device), q_ids, q_mask, a_ids, a_mask,
                                                 min(d.k_test, len(answer_list)),
                                                 fix_double_count=self.cfg.model.fix_vqa_double_count)
                best = topk.gather(1, probs.argmax(1, keepdim=True)).squeeze(1)
                for qid, a in zip(qids.tolist(), best.tolist(), strict=True):
                    results.append({"question_id": qid, "answer": answer_list[a]})
        by_qid = {e["question_id"]: e for e in test.entries}
        for r in results:
            annotators = by_qid[r["question_id"]].get("answer")
            if annotators:
                score += vqa_accuracy(r["answer"], annotators)
                counted += 1
        if self.out_dir is not None:  # written at every evaluation, not only at the end
            write_text_atomic(self.out_dir / "vqa_result.json", json.dumps(results))
        train = read_entries(self.train_file, VQA_TRAIN)
        by_type = vqa_by_type(train, test.entries, {r["question_id"]: r["answer"] for r in results})
        per_type = {f"{k}_{kind}": v for kind, row in by_type.items() for k, v in
                    (("vqa_acc", row["acc"]), ("text_only_acc", row["text_only"]), ("n", row["n"]))}
        return {"vqa_acc": 100.0 * score / max(1, counted), "answered": len(results),
                "majority_answer_acc": majority_answer_accuracy(test.entries),
                "text_only_acc": vqa_text_only_accuracy(train, test.entries), **per_type}


class ClassifyTask(Task):
    """A class per (image(s), text): SNLI-VE and NLVR2 differ in their data set and how a batch is laid out."""

    primary = "acc"
    dataset_cls: type[Dataset]
    fields: dict  # the entry fields of its files (albef_lab.data.formats)

    def dataset(self, file: Path, transform: ImageTextTransform) -> Dataset:
        return self.dataset_cls(file, self.image_root, transform, self.cfg.data.max_words)

    def train_set(self):
        return self.dataset(self.train_file, self.train_transform())

    def images(self, batch) -> tuple[Tensor, list[str], Tensor]:
        """(images, texts, labels) of a batch."""
        raise NotImplementedError

    def _split(self, batch, device):
        images, text, labels = self.images(batch)
        ids, mask = self.text(text, device)
        return images.to(device), ids, mask, labels.to(device)

    def forward(self, net, batch, alpha, gen, device):
        images, ids, mask, labels = self._split(batch, device)
        return {"loss": net(images, ids, mask, labels, alpha)}

    @torch.no_grad()
    def evaluate(self, model, device):
        ds = self.eval_set(self.dataset(self.val_file, eval_transform(self.res)))
        correct = n = 0
        labels_seen = Counter()
        with eval_mode(model):
            for batch in DataLoader(ds, batch_size=64, shuffle=False):
                images, ids, mask, labels = self._split(batch, device)
                pred = model.logits(images, ids, mask).argmax(1)
                correct += (pred == labels).sum().item()
                n += labels.numel()
                labels_seen.update(labels.tolist())
        return {"acc": 100.0 * correct / max(1, n), "majority_class_acc": 100.0 * max(labels_seen.values()) / max(1, n),
                "text_only_acc": text_only_accuracy(read_entries(self.train_file, self.fields), ds.entries)}


class NLVRTask(ClassifyTask):
    name = "nlvr"
    dataset_cls, fields = DS.NLVRDataset, NLVR

    def images(self, batch):
        img0, img1, text, labels = batch
        return torch.cat([img0, img1], dim=0), text, labels  # left images, then right images


class VETask(ClassifyTask):
    name = "ve"
    dataset_cls, fields = DS.VEDataset, VE

    def images(self, batch):
        return batch


class GroundingTask(RetrievalTask):
    """Fine-tunes the retrieval model on referring expressions (each expression a caption of its image);
    evaluation ranks the proposals by Grad-CAM (see albef_lab/eval/grounding.py)."""

    name = "grounding"
    primary = "acc_all"

    def train_set(self):
        return DS.GroundingDataset(self.train_file, self.image_root, self.train_transform(),
                                   self.cfg.data.max_words, train=True)

    def evaluate(self, model, device):
        """Accuracy per split, beside a random proposal and a map on a random object (both ignore the text);
        `blind="text"` scores each expression's map against another object's box (the text-blind control)."""
        from albef_lab.eval.grounding import evaluate_grounding, random_object_baseline, random_proposal_baseline

        d = self.cfg.data
        if self.blind not in ("", "text"):
            raise ValueError(f"grounding's control is blind='text' (the words of another object), not {self.blind!r}")
        refer = resolve(d.root, d.refer_dir)
        out = evaluate_grounding(model, self.tok, self.val_file, self.image_root, refer, self.res, device,
                                 block=d.gradcam_block, mode=d.gradcam_mode,
                                 text_control="shuffle" if self.blind else "")
        return {**out, "random_proposal_acc": random_proposal_baseline(self.val_file, refer)["acc_all"],
                "random_object_acc": random_object_baseline(self.val_file, refer)["acc_all"]}


class TextAssignmentTask(Task):
    """NLVR2's extra pre-training: tell whether a caption belongs to the left image, the right one, or neither
    of an image pair drawn from the batch (image-caption pairs as in pre-training)."""

    name = "pretrain_nlvr"
    primary = "ta_acc"

    def forward(self, net, batch, alpha, gen, device):
        images, captions, _ = batch
        ids, mask = self.text(captions, device)
        return {"loss": net(images.to(device), ids, mask, source=RandomSource(gen))}

    @torch.no_grad()
    def evaluate(self, model, device):
        val = self.retrieval_val()
        gen = torch.Generator(device=device).manual_seed(0)
        correct = n = 0
        with eval_mode(model):
            for images, index in DataLoader(val, batch_size=64, shuffle=False):
                if images.shape[0] < 3:
                    continue
                ids, mask = self.text([val.text[val.img2txt[i][0]] for i in index.tolist()], device)
                pred, labels = model.assignment_logits(images.to(device), ids, mask, RandomSource(gen))
                correct += (pred.argmax(1) == labels).sum().item()
                n += images.shape[0]
        return {"ta_acc": 100.0 * correct / max(1, n)}


TASKS: dict[str, type[Task]] = {t.name: t for t in (Task, RetrievalTask, GroundingTask, VQATask, NLVRTask, VETask,
                                                     TextAssignmentTask)}


def task_class(name: str) -> type[Task]:
    """The engine's Task for a registered task name."""
    task_spec(name)  # an unknown name fails with the registry's list
    return TASKS[name]
