"""Inference for people and scripts: load checkpoints once, then search, answer, explain and ground.

The Gradio app (app/main.py) and the notebooks call `Workbench`; it only orchestrates the models' own API
(`encode_image`, `encode_text`, `itm_logits`, `rank_answers`) and the Grad-CAM functions of `albef_lab.viz`.
Bad input raises `InputError` with a message meant for the user; `notes` in a result say what was changed
(a long text truncated, words outside the vocabulary).
"""

from __future__ import annotations

import hashlib
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError
from torch import Tensor, nn
from tqdm import tqdm

from albef_lab.config import ModelConfig
from albef_lab.data.tokenizer import Tokenizer
from albef_lab.data.transforms import eval_transform
from albef_lab.eval.grounding import best_proposal
from albef_lab.models.base import eval_mode
from albef_lab.models.checkpoint import CheckpointError, LoadReport, load_for_task, recognise, save_atomic
from albef_lab.models.factory import create_model
from albef_lab.train.plot import read_metrics
from albef_lab.viz.gradcam import cross_attention_layers, default_itm_layer, itc_gradcam, itm_gradcam, upsample

MAX_PIXELS = 120_000_000  # larger uploads are refused (a 40-megapixel photo is fine)
WORK_SIDE = 2048  # big images are shrunk to this longer side before anything else
IMAGE_SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".webp", ".tif", ".tiff"}


class InputError(ValueError):
    """Something the user gave cannot be used; the message says what and why."""


# --- inputs ---------------------------------------------------------------------------------

def read_image(src: str | Path | Image.Image | np.ndarray) -> Image.Image:
    """Any image a user may upload as 8-bit RGB: RGBA (on white), greyscale, 16-bit, CMYK, palette, huge."""
    if isinstance(src, np.ndarray):
        src = Image.fromarray(src)
    if isinstance(src, Image.Image):
        img = src
    else:
        path = Path(src)
        if not path.is_file():
            raise InputError(f"image not found: {path.name}")
        try:
            img = Image.open(path)
            if img.width * img.height > MAX_PIXELS:
                raise InputError(f"{path.name} has {img.width * img.height / 1e6:.0f} megapixels; the limit is "
                                 f"{MAX_PIXELS / 1e6:.0f}")
            img.draft("RGB", (WORK_SIDE, WORK_SIDE))  # JPEG: decode at a reduced size, cheaply
            img.load()
        except InputError:
            raise
        except (UnidentifiedImageError, OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
            reason = str(e).replace(str(path), path.name)
            raise InputError(f"{path.name} is not an image that can be read ({type(e).__name__}: {reason})") from e
    img = ImageOps.exif_transpose(img)
    if max(img.size) > WORK_SIDE:
        img = img.copy()
        img.thumbnail((WORK_SIDE, WORK_SIDE), Image.BICUBIC)
    return to_rgb(img)


def to_rgb(img: Image.Image) -> Image.Image:
    if img.mode in ("I;16", "I;16B", "I;16L", "I", "F"):  # 16-bit / float greyscale: scale into 8 bits
        a = np.asarray(img, dtype=np.float64)
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) * 255 if hi > lo else np.zeros_like(a)
        return Image.fromarray(a.astype(np.uint8)).convert("RGB")
    if img.mode in ("RGBA", "LA", "PA") or (img.mode == "P" and "transparency" in img.info):
        rgba = img.convert("RGBA")
        white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        return Image.alpha_composite(white, rgba).convert("RGB")
    return img.convert("RGB")


@dataclass
class Text:
    """A tokenised text with what the user should know about it."""

    ids: Tensor  # [1, L]
    mask: Tensor  # [1, L]
    tokens: list[str]  # one per position, [CLS] first
    notes: list[str] = field(default_factory=list)


def sha256(path: str | Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


# --- loading ----------------------------------------------------------------------------------

@dataclass
class Loaded:
    """One checkpoint in memory, with what the About panel shows."""

    task: str
    model: nn.Module
    cfg: ModelConfig
    report: LoadReport
    path: str = ""
    checksum: str = ""
    inferred: list[str] = field(default_factory=list)  # what an official file did not say, and how it was found
    held_out: dict = field(default_factory=dict)  # the run's last evaluation, when its metrics.jsonl is beside it

    def summary(self) -> dict:
        params = {name: sum(p.numel() for p in child.parameters()) for name, child in self.model.named_children()
                  if not name.endswith("_m")}
        return {"file": Path(self.path).name or "(built in memory)", "task": self.task, "sha256": self.checksum,
                "image_res": self.cfg.vision.image_res, "parameters": params,
                "parameters_total": sum(p.numel() for p in self.model.parameters() if p.requires_grad),
                "missing": self.report.missing, "unexpected": self.report.unexpected,
                "resized": self.report.resized, "inferred": self.inferred, **self.held_out_summary()}

    def held_out_summary(self) -> dict:
        """The held-out figures; for VQA each question type beside the text-only guess on the same questions."""
        if not self.held_out:
            return {}
        kinds = sorted(k.removeprefix("n_") for k in self.held_out if k.startswith("n_") and k != "n_images")
        rows = [{"type": k, "accuracy": round(self.held_out[f"vqa_acc_{k}"], 1),
                 "text_only_guess": round(self.held_out[f"text_only_acc_{k}"], 1), "questions": self.held_out[f"n_{k}"]}
                for k in kinds if f"vqa_acc_{k}" in self.held_out]
        main = {k: v for k, v in self.held_out.items() if not any(k.endswith(f"_{kind}") for kind in kinds)}
        return {"held_out": main, **({"held_out_by_question_type": rows} if rows else {})}


MAX_LABELS = 100  # classify: one fused pass per label
DEMO_TASKS = ("pretrain", "retrieval", "grounding", "vqa")  # what the workbench shows: matching models and VQA


def load_checkpoint(path: str | Path, arch: ModelConfig | None = None) -> Loaded:
    """Ours (the config travels inside) or an official file (architecture `arch`, a preset's model config; image
    size from the file's position table): `models.checkpoint.recognise`. Keys that do not fit raise
    CheckpointError with the full report."""
    found = recognise(path, arch)
    if found.task not in DEMO_TASKS:
        raise CheckpointError(f"{path} holds a {found.task} model: the workbench shows pre-training, retrieval / "
                              f"grounding and VQA models ({found.task} files are for `albef-lab evaluate`)")
    model = create_model(found.task, found.config)
    report = load_for_task(model, found.task, found.state_dict, fusion_layer=found.config.text.fusion_layer)
    return Loaded(found.task, model.eval(), found.config, report, str(path), sha256(path), found.inferred,
                  last_evaluation(Path(path).parent / "metrics.jsonl"))


def last_evaluation(metrics: Path) -> dict:
    """The last `val_*` row of a run's metrics.jsonl, without the prefix ({} when there is none)."""
    rows = read_metrics(metrics, running=True) if metrics.is_file() else []
    evals = ({k.removeprefix("val_"): v for k, v in r.items() if k.startswith("val_")} for r in reversed(rows))
    return next((e for e in evals if e), {})


# --- the gallery index --------------------------------------------------------------------------

@dataclass
class Gallery:
    paths: list[Path]
    feats: Tensor  # [N, E] normalised ITC features
    skipped: dict[str, str]  # file name -> why it was left out


def folder_images(folder: str | Path) -> list[Path]:
    folder = Path(folder)
    if not folder.is_dir():
        raise FileNotFoundError(f"gallery folder not found: {folder}")
    return sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())


def gallery_key(model_id: str, paths: list[Path], res: int) -> str:
    """Changes when the model, the image size or any file of the folder (name, size, time) changes."""
    h = hashlib.sha256(f"{model_id}|{res}".encode())
    for p in paths:
        st = p.stat()
        h.update(f"{p}|{st.st_size}|{st.st_mtime_ns}\n".encode())
    return h.hexdigest()[:20]


# --- the workbench ----------------------------------------------------------------------------

class SharedLock:
    """Many holders at once (`shared`), or one alone (`exclusive`); a waiting `exclusive` goes first."""

    def __init__(self):
        self._cond = threading.Condition()
        self._holders, self._alone, self._waiting = 0, False, 0

    @contextmanager
    def shared(self) -> Iterator[None]:
        with self._cond:
            self._cond.wait_for(lambda: not (self._alone or self._waiting))
            self._holders += 1
        try:
            yield
        finally:
            with self._cond:
                self._holders -= 1
                self._cond.notify_all()

    @contextmanager
    def exclusive(self) -> Iterator[None]:
        with self._cond:
            self._waiting += 1
            self._cond.wait_for(lambda: not (self._alone or self._holders))
            self._waiting -= 1
            self._alone = True
        try:
            yield
        finally:
            with self._cond:
                self._alone = False
                self._cond.notify_all()


class Workbench:
    """Loaded models, the tokenizer, the gallery index and the caption / answer sets; every tab's computation."""

    def __init__(self, tokenizer: Tokenizer, matcher: Loaded | None = None, vqa: Loaded | None = None,
                 captions: list[str] | None = None, answer_list: list[str] | None = None,
                 device: str | torch.device = "cpu", max_tokens: int = 30):
        if matcher is None and vqa is None:
            raise ValueError("the workbench needs a matching model (pre-training / retrieval) or a VQA model")
        self.tok, self.matcher, self.vqa = tokenizer, matcher, vqa
        self.device = torch.device(device)
        self.max_tokens = max_tokens
        for loaded in (matcher, vqa):
            if loaded is not None:
                loaded.model.to(self.device).eval()
        self.captions = captions or []
        self.answer_list = answer_list or []
        self.gallery: Gallery | None = None
        self._caption_feats: Tensor | None = None
        self._answer_tokens: tuple[Tensor, Tensor] | None = None
        self._proposals: dict[str, list[list[float]]] = {}
        # Every call keeps its own state (Grad-CAM's maps too), so calls share the models; pytorch-grad-cam hooks
        # the image encoder itself, and those hooks would see every other call's forward: it runs alone.
        self.lock = SharedLock()
        self._cache_lock = threading.Lock()

    @property
    def model(self) -> nn.Module:
        if self.matcher is None:
            raise InputError("no image-text matching model is loaded (give a pre-training or retrieval checkpoint)")
        return self.matcher.model

    def about(self) -> list[dict]:
        return [x.summary() for x in (self.matcher, self.vqa) if x is not None]

    # --- inputs ---
    def text(self, text: str, what: str = "text") -> Text:
        if not isinstance(text, str) or not text.strip():
            raise InputError(f"the {what} is empty: type a few words")
        text = " ".join(text.split())
        ids = self.tok.encode(text)
        notes = []
        if len(ids) > self.max_tokens:
            notes.append(f"the {what} is {len(ids)} tokens long; only the first {self.max_tokens} are used")
            ids = ids[: self.max_tokens]
        tokens = self.tok.hf.convert_ids_to_tokens(ids)
        unknown = [w for w in text.lower().split() if self.tok.hf.tokenize(w) == ["[UNK]"]]
        if unknown:
            notes.append(f"not in the vocabulary (shown as [UNK]): {', '.join(dict.fromkeys(unknown))}")
        t = torch.tensor([ids], device=self.device)
        return Text(t, torch.ones_like(t), tokens, notes)

    def pixels(self, image: Image.Image, model: nn.Module | None = None) -> Tensor:
        res = (model or self.model).cfg.vision.image_res
        return eval_transform(res)(image)[0][None].to(self.device)

    # --- retrieval ---
    def index_gallery(self, paths: list[Path], cache_dir: str | Path | None = None, batch_size: int = 64,
                      progress: bool = True) -> Gallery:
        """ITC features of every readable image (computed once, cached on disk); unreadable ones are skipped."""
        key = gallery_key(self.matcher.checksum or str(id(self.model)), paths, self.model.cfg.vision.image_res)
        cache = Path(cache_dir) / f"gallery-{key}.pt" if cache_dir else None
        if cache is not None and cache.is_file():
            saved = torch.load(cache, weights_only=True)
            self.gallery = Gallery([Path(p) for p in saved["paths"]], saved["feats"].to(self.device), saved["skipped"])
            return self.gallery
        kept, feats, skipped = [], [], {}
        batch: list[Tensor] = []

        def flush() -> None:
            if batch:
                with torch.no_grad():
                    feats.append(self.model.encode_image(torch.cat(batch))[1])
                batch.clear()

        with eval_mode(self.model):
            for p in tqdm(paths, desc="indexing gallery", unit="img", disable=not progress):
                try:
                    batch.append(self.pixels(read_image(p)))
                    kept.append(p)
                except InputError as e:
                    skipped[p.name] = str(e)
                if len(batch) == batch_size:
                    flush()
            flush()
        if not kept:
            raise InputError(f"no readable image among {len(paths)} files")
        self.gallery = Gallery(kept, torch.cat(feats), skipped)
        if cache is not None:
            save_atomic({"paths": [str(p) for p in kept], "feats": self.gallery.feats.cpu(), "skipped": skipped}, cache)
        return self.gallery

    @torch.no_grad()
    def search(self, query: str, k: int = 8, rerank: bool = True) -> tuple[list[dict], list[str]]:
        """Text -> the k best gallery images by ITC similarity, re-ranked by ITM match probability."""
        if self.gallery is None:
            raise InputError("no gallery is indexed")
        k = count(k, "the number of images")
        t = self.text(query, "query")
        model = self.model
        with self.lock.shared(), eval_mode(model):
            text_states, text_feat = model.encode_text(t.ids, t.mask)
            sims = (self.gallery.feats @ text_feat[0]).cpu()
            top = sims.topk(min(k, len(sims))).indices.tolist()
            rows = [{"path": str(self.gallery.paths[i]), "itc": float(sims[i])} for i in top]
            if rerank and rows:
                images = torch.cat([self.pixels(read_image(r["path"])) for r in rows])
                image_states, _ = model.encode_image(images)
                n = len(rows)
                logits = model.itm_logits(text_states.expand(n, -1, -1), t.mask.expand(n, -1), image_states)
                for r, p in zip(rows, match_probability(logits).tolist(), strict=True):
                    r["itm"] = p
                rows.sort(key=lambda r: -r["itm"])
        return rows, t.notes

    @torch.no_grad()
    def describe(self, image: Image.Image, k: int = 5) -> list[dict]:
        """Image -> the k captions of the caption set with the highest ITC similarity."""
        if not self.captions:
            raise InputError("no caption set is loaded")
        k = count(k, "the number of captions")
        model = self.model
        with self.lock.shared(), eval_mode(model):
            with self._cache_lock:  # the caption set is encoded once, by the first call that needs it
                if self._caption_feats is None:
                    feats = []
                    for a in range(0, len(self.captions), 256):
                        ids, mask = self.tok(self.captions[a:a + 256], max_length=self.max_tokens)
                        feats.append(model.encode_text(ids.to(self.device), mask.to(self.device))[1])
                    self._caption_feats = torch.cat(feats)
            _, feat = model.encode_image(self.pixels(image))
            sims = (self._caption_feats @ feat[0]).cpu()
        top = sims.topk(min(k, len(sims)))
        return [{"caption": self.captions[i], "itc": float(s)} for s, i in zip(top.values.tolist(),
                                                                               top.indices.tolist(), strict=True)]

    @torch.no_grad()
    def classify(self, image: Image.Image, labels: list[str] | str, template: str = "a photo of a {}",
                 rerank: bool = True) -> tuple[list[dict], list[str]]:
        """Zero-shot classification: each label in the template is a caption; ITC's softmax over them (at the
        model's temperature) ranks them, ITM's match probability re-ranks. Labels: a list or comma-separated."""
        if isinstance(labels, str):
            labels = labels.split(",")
        labels = list(dict.fromkeys(" ".join(str(x).split()) for x in labels if str(x).strip()))
        if len(labels) < 2:
            raise InputError("give at least two different labels (comma-separated)")
        if len(labels) > MAX_LABELS:
            raise InputError(f"{len(labels)} labels; at most {MAX_LABELS}")
        if not isinstance(template, str) or template.count("{}") != 1:
            raise InputError('the template must hold "{}" once, where each label goes (e.g. "a photo of a {}")')
        texts = [self.text(template.format(x), "label") for x in labels]
        notes = list(dict.fromkeys(n for t in texts for n in t.notes))
        ids, mask = self.tok([template.format(x) for x in labels], max_length=self.max_tokens)
        ids, mask = ids.to(self.device), mask.to(self.device)
        model = self.model
        with self.lock.shared(), eval_mode(model):
            image_states, image_feat = model.encode_image(self.pixels(image))
            text_states, text_feat = model.encode_text(ids, mask)
            sims = (text_feat @ image_feat[0]).cpu()
            probs = (sims / model.temp.detach().cpu()).softmax(0)
            rows = [{"label": x, "text": template.format(x), "itc": float(s), "itc_prob": float(p)}
                    for x, s, p in zip(labels, sims.tolist(), probs.tolist(), strict=True)]
            if rerank:
                n = len(rows)
                logits = model.itm_logits(text_states, mask, image_states.expand(n, -1, -1))
                for r, p in zip(rows, match_probability(logits).tolist(), strict=True):
                    r["itm"] = p
        rows.sort(key=lambda r: -r["itm" if rerank else "itc"])
        return rows, notes

    # --- VQA ---
    @torch.no_grad()
    def answer(self, image: Image.Image, question: str, k: int = 5, candidates: int = 128) -> tuple[list[dict],
                                                                                                    list[str]]:
        """The k best answers of the answer list (top `candidates` by first token, rescored by the sequence)."""
        if self.vqa is None or not self.answer_list:
            raise InputError("no VQA model (and answer list) is loaded")
        k = count(k, "the number of answers")
        q = self.text(question, "question")
        model = self.vqa.model
        with self._cache_lock:  # the answer list is tokenised once, not per request
            if self._answer_tokens is None:
                ids, mask = self.tok([a + "[SEP]" for a in self.answer_list], max_length=self.max_tokens)
                self._answer_tokens = ids.to(self.device), mask.to(self.device)
        a_ids, a_mask = self._answer_tokens
        with self.lock.shared(), eval_mode(model):
            ids, probs = model.rank_answers(self.pixels(image, model), q.ids, q.mask, a_ids, a_mask,
                                            min(max(candidates, k), len(self.answer_list)))
        top = [{"answer": self.answer_list[i], "score": p} for i, p in zip(ids[0].tolist(), probs[0].tolist(),
                                                                           strict=True)]
        return top[:k], q.notes

    # --- Grad-CAM ---
    def layers(self) -> list[int]:
        return cross_attention_layers(self.model)

    def default_layer(self) -> int:
        """`default_itm_layer`: the 3rd fusion layer at base size (the paper's); never the last one."""
        return default_itm_layer(self.model)

    def explain(self, image: Image.Image, text: str, mode: str = "itm", layer: int | None = None) -> dict:
        """ITM probability, ITC similarity, the sentence map and one map per word ([s, s] each, patch grid)."""
        with self.lock.shared():
            return self._explain(image, text, mode, layer)

    def _explain(self, image: Image.Image, text: str, mode: str, layer: int | None) -> dict:
        model = self.model
        layer = self._layer(mode, layer)
        t = self.text(text)
        x = self.pixels(image)
        with eval_mode(model), torch.no_grad():
            image_states, image_feat = model.encode_image(x)
            text_states, text_feat = model.encode_text(t.ids, t.mask)
            itm = float(match_probability(model.itm_logits(text_states, t.mask, image_states))[0])
            itc = float(image_feat[0] @ text_feat[0])
        with eval_mode(model):
            if mode == "itm":
                per_word = itm_gradcam(model, x, t.ids, t.mask, layer, per_token=True)[0]  # [L, s, s]
                sentence = per_word.mean(0)
                words = [(tok, per_word[i]) for i, tok in enumerate(t.tokens) if i > 0]
            else:
                sentence, words = itc_gradcam(model, x, t.ids, t.mask, layer)[0], []
        return {"itm_prob": itm, "itc_sim": itc, "sentence": sentence, "words": words, "layer": layer,
                "mode": mode, "notes": t.notes}

    def _layer(self, mode: str, layer: int | None) -> int:
        """The layer a Grad-CAM mode reads: a cross-attention layer (itm) or a ViT block (itc)."""
        if mode == "itm":
            layers = cross_attention_layers(self.model)
            chosen = default_itm_layer(self.model) if layer is None else int(layer)
            if chosen not in layers:
                raise InputError(f"layer {layer} has no cross-attention: choose one of {layers}")
            return chosen
        if mode == "itc":
            blocks = len(self.model.visual_encoder.blocks)
            chosen = -1 if layer is None else int(layer)
            if not -blocks <= chosen < blocks:
                raise InputError(f"the image encoder has {blocks} blocks: choose a block from 0 to {blocks - 1}")
            return chosen
        raise InputError(f"Grad-CAM mode must be 'itm' or 'itc', not {mode!r}")

    def cam_methods(self, image: Image.Image, text: str, methods: tuple[str, ...] = ("GradCAM", "GradCAM++",
                    "EigenCAM", "ScoreCAM")) -> dict[str, np.ndarray]:
        """pytorch-grad-cam on the ViT, the target being the image-text ITC similarity; maps [s, s] in [0, 1]."""
        from albef_lab.viz.camlib import similarity_cams

        t = self.text(text)
        with self.lock.exclusive(), eval_mode(self.model):
            return similarity_cams(self.model, self.pixels(image), t.ids, t.mask, methods)

    # --- grounding ---
    def proposals_for(self, image_path: str | None, width: int, height: int) -> tuple[list[list[float]], str]:
        """ShapesWorld's proposals for its own images (matched by file name), else sliding windows."""
        if image_path is not None and Path(image_path).name in self._proposals:
            return self._proposals[Path(image_path).name], "ShapesWorld proposals"
        return sliding_windows(width, height), "sliding windows"

    def load_world_proposals(self, refer_dir: str | Path) -> None:
        d = Path(refer_dir)
        if not (d / "instances.json").is_file():
            return
        images = json.loads((d / "instances.json").read_text())["images"]
        dets = json.loads((d / "dets.json").read_text())
        self._proposals = {Path(im["file_name"]).name: dets[str(im["id"])] for im in images if str(im["id"]) in dets}

    def ground(self, image: Image.Image, expression: str, image_path: str | None = None, mode: str = "itm",
               layer: int | None = None) -> dict:
        """The proposal with the most heat per area**0.5 (the paper's rule) under the expression's Grad-CAM map;
        `box` is None only where the map has no heat at all."""
        result = self.explain(image, expression, mode, layer)
        proposals, source = self.proposals_for(image_path, image.width, image.height)
        heat = upsample(result["sentence"][None], image.height, image.width)[0]
        box = best_proposal(heat, proposals)
        return {**result, "box": box, "proposals": proposals, "proposal_source": source}


def count(k, what: str) -> int:
    """A number of results the user asked for: a whole number of at least 1."""
    if isinstance(k, bool) or not isinstance(k, int | float) or k != int(k) or k < 1:
        raise InputError(f"{what} must be a whole number of at least 1, not {k!r}")
    return int(k)


def match_probability(itm_logits: Tensor) -> Tensor:
    """P(match) of ITM logits [B, 2] ordered {no match, match}, as the ITM head is trained (`itm_loss`)."""
    return itm_logits.softmax(-1)[:, 1]


def sliding_windows(width: int, height: int, scales: tuple[float, ...] = (0.25, 0.4, 0.6, 0.85),
                    overlap: float = 0.5) -> list[list[float]]:
    """Square windows of each scale (a fraction of the shorter side), stepped by (1 - overlap) x their side,
    covering the image (the last window of a row or column touches the far edge); the documented proposals
    for images that come without any."""
    boxes = []
    short = min(width, height)
    for s in scales:
        side = s * short
        step = max(1.0, side * (1 - overlap))
        xs = _starts(width, side, step)
        ys = _starts(height, side, step)
        boxes += [[x, y, side, side, 1.0] for y in ys for x in xs]
    return boxes


def _starts(length: float, side: float, step: float) -> list[float]:
    last = max(length - side, 0.0)
    starts = [float(v) for v in np.arange(0, last + 1e-6, step)]
    return starts if starts[-1] >= last - 1e-6 else [*starts, last]
