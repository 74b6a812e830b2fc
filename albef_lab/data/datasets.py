"""torch Datasets for every task, reading the official formats (see `formats.py`).

Missing image files are an error at construction (naming them); an image that exists but cannot be
decoded is skipped at load time, counted in `dataset.skipped` and reported once with its path.
"""

from __future__ import annotations

import io
import random
import warnings
from collections import Counter
from pathlib import Path

import torch
from PIL import Image
from torch.utils.data import Dataset
from torchvision.io import ImageReadMode, decode_jpeg

from albef_lab.data import formats as F
from albef_lab.data.transforms import ImageTextTransform, as_uint8


def _unreadable(name: str | Path, e: BaseException) -> ValueError:
    return ValueError(f"{name}: not a readable image ({type(e).__name__}: {e})")


def read_bytes(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise _unreadable(path, e) from e


def decode_rgb(data: bytes, name: str | Path) -> Image.Image:
    """Encoded image bytes as RGB; undecodable bytes are a ValueError that names `name`."""
    try:
        with Image.open(io.BytesIO(data)) as im:
            return im.convert("RGB")
    except (OSError, SyntaxError, ValueError) as e:  # PIL raises these for truncated or corrupt files
        raise _unreadable(name, e) from e


def decode_uint8(data: bytes, name: str | Path) -> torch.Tensor:
    """Encoded image bytes as a uint8 `[3, H, W]` RGB tensor: JPEGs decoded by libjpeg-turbo through torchvision
    (the same pixels as PIL's decode), anything else, or a JPEG torchvision refuses, by PIL."""
    if data[:3] == b"\xff\xd8\xff":  # a JPEG
        try:
            return decode_jpeg(torch.frombuffer(bytearray(data), dtype=torch.uint8), mode=ImageReadMode.RGB)
        except RuntimeError:  # corrupt, truncated or an unusual colour space: PIL says which, or reads it
            pass
    return as_uint8(decode_rgb(data, name))


def read_rgb(path: str | Path) -> Image.Image:
    """An image file as RGB; a missing or unreadable file is a ValueError that names it."""
    return decode_rgb(read_bytes(path), path)


def read_uint8(path: str | Path) -> torch.Tensor:
    """An image file as a uint8 `[3, H, W]` RGB tensor (`decode_uint8`); errors as `read_rgb`'s."""
    return decode_uint8(read_bytes(path), path)


def image_indices(entries: list[dict]) -> tuple[list[int], list[str]]:
    """(each entry's image index, the file of each image index): captions of one image share an index."""
    ids = [e.get("image_id", e["image"]) for e in entries]
    index = {k: i for i, k in enumerate(dict.fromkeys(ids))}
    first: dict[int, str] = {}
    for e, k in zip(entries, ids, strict=True):
        first.setdefault(index[k], e["image"])
    return [index[k] for k in ids], [first[i] for i in range(len(first))]


class ImageTextDataset(Dataset):
    """Shared image handling: root checks, file checks, and skipping of unreadable images."""

    image_keys: tuple[str, ...] = ("image",)

    def __init__(self, entries: list[dict], image_root: str | Path, transform: ImageTextTransform,
                 check_files: bool = True):
        self.root = Path(image_root)
        if not self.root.is_dir():
            raise FileNotFoundError(f"image root not found: {self.root}")
        self.entries = entries
        self.transform = transform
        self.skipped: dict[str, str] = {}
        if check_files:
            self._check_files()

    def entry_paths(self, entry: dict) -> list[Path]:
        paths = []
        for key in self.image_keys:
            values = entry[key] if isinstance(entry[key], list) else [entry[key]]
            paths += [self.root / v for v in values]
        return paths

    def _check_files(self) -> None:
        missing = [str(p) for e in self.entries for p in self.entry_paths(e) if not p.is_file()]
        if missing:
            raise FileNotFoundError(f"{len(missing)} image file(s) missing, e.g. {missing[:3]}")

    def open_image(self, path: Path) -> Image.Image | torch.Tensor:
        return self.decode(read_bytes(path), path)

    def decode(self, data: bytes, name: str | Path) -> Image.Image | torch.Tensor:
        """What the transform takes: a uint8 tensor on the fast path, else a PIL image."""
        return decode_uint8(data, name) if getattr(self.transform, "wants_tensor", False) else decode_rgb(data, name)

    def __len__(self) -> int:
        return len(self.entries)

    def load(self, index: int):
        raise NotImplementedError

    def __getitem__(self, index: int):
        for attempt in range(len(self)):
            j = (index + attempt) % len(self)
            try:
                return self.load(j)
            except (OSError, SyntaxError, ValueError) as e:  # PIL raises these for corrupt files
                path = str(getattr(e, "filename", None) or self.entry_paths(self.entries[j])[0])
                if path not in self.skipped:
                    self.skipped[path] = f"{type(e).__name__}: {e}"
                    why = e.__cause__ or e  # read_rgb's message names the path again
                    warnings.warn(f"skipping unreadable image {path}: {why} ({len(self.skipped)} skipped so far)",
                                  stacklevel=2)
        raise RuntimeError(f"no readable image in the dataset under {self.root}")

    def _image(self, path: Path, texts: list[str]) -> tuple[torch.Tensor, list[str]]:
        try:
            img = self.open_image(path)
        except (OSError, SyntaxError, ValueError) as e:
            e.filename = str(path)
            raise
        return self.transform(img, texts)


class PretrainDataset(ImageTextDataset):
    """Entries `{image, caption (str or list)}`; returns (image, caption, index of the image)."""

    def __init__(self, files, image_root, transform, max_words: int = 30, **kw):
        super().__init__(F.read_entries(files, F.PRETRAIN), image_root, transform, **kw)
        self.max_words = max_words
        self.image_index, self.image_files = image_indices(self.entries)

    def load(self, i: int):
        e = self.entries[i]
        cap = e["caption"] if isinstance(e["caption"], str) else random.choice(e["caption"])
        img, (cap,) = self._image(self.root / e["image"], [F.pre_caption(cap, self.max_words)])
        return img, cap, self.image_index[i]


class RetrievalTrainDataset(PretrainDataset):
    """COCO/Flickr train `{image, caption, image_id}`; the image index makes same-image captions positives."""

    def __init__(self, files, image_root, transform, max_words: int = 30, **kw):
        super().__init__(files, image_root, transform, max_words, **kw)
        F.read_entries(files, F.RETRIEVAL_TRAIN)  # validates image_id presence


class RetrievalEvalDataset(ImageTextDataset):
    """Val/test `{image, caption: [...]}`: yields images; texts and the image<->text maps are attributes."""

    def __init__(self, file, image_root, transform, max_words: int = 30, **kw):
        super().__init__(F.read_entries(file, F.RETRIEVAL_EVAL), image_root, transform, **kw)
        self.text, self.txt2img, self.img2txt = [], {}, {}
        for i, e in enumerate(self.entries):
            self.img2txt[i] = []
            for cap in e["caption"]:
                self.img2txt[i].append(len(self.text))
                self.txt2img[len(self.text)] = i
                self.text.append(F.pre_caption(cap, max_words))

    def load(self, i: int):
        img, _ = self._image(self.root / self.entries[i]["image"], [])
        return img, i


def answer_weights(answers: list[str] | str, source: str = "vqa") -> tuple[list[str], list[float]]:
    """VQA soft targets: each distinct answer weighted by its share of the annotators (VG: 0.5)."""
    if isinstance(answers, str):
        answers = [answers]
    if source == "vg":
        return [answers[0]], [0.5]
    counts = Counter(answers)
    return list(counts), [n / len(answers) for n in counts.values()]


class VQADataset(ImageTextDataset):
    """Train entries `{image, question, answer: [...], dataset: vqa|vg}`; test `{image, question, question_id}`."""

    def __init__(self, files, image_root, transform, train: bool = True, vg_root: str | Path | None = None,
                 max_words: int = 30, **kw):
        required = F.VQA_TRAIN if train else F.VQA_TEST
        self.vg_root = Path(vg_root) if vg_root else None
        super().__init__(F.read_entries(files, required), image_root, transform, **kw)
        self.train, self.max_words = train, max_words

    def entry_paths(self, entry: dict) -> list[Path]:
        if entry.get("dataset") == "vg":
            if self.vg_root is None:
                raise FileNotFoundError("VQA entries from Visual Genome need vg_root")
            return [self.vg_root / entry["image"]]
        return [self.root / entry["image"]]

    def load(self, i: int):
        e = self.entries[i]
        question = F.pre_question(e["question"], self.max_words)
        answers, weights = answer_weights(e.get("answer", []), e.get("dataset", "vqa")) if self.train else ([], [])
        img, texts = self._image(self.entry_paths(e)[0], [question, *answers])
        if self.train:
            return img, texts[0], texts[1:], weights
        return img, texts[0], e["question_id"]


class NLVRDataset(ImageTextDataset):
    """`{images: [left, right], sentence, label: 'True'|'False'}`; returns (img0, img1, sentence, label).

    "left"/"right" here name the images, not sides within them: the flip never rewrites the text.
    """

    image_keys = ("images",)

    def __init__(self, files, image_root, transform, max_words: int = 30, **kw):
        super().__init__(F.read_entries(files, F.NLVR), image_root, transform, **kw)
        self.max_words = max_words

    def load(self, i: int):
        e = self.entries[i]
        sentence = F.pre_caption(e["sentence"], self.max_words)
        img0, _ = self._image(self.root / e["images"][0], [])
        img1, _ = self._image(self.root / e["images"][1], [])
        label = e["label"] if isinstance(e["label"], bool) else e["label"] == "True"
        return img0, img1, sentence, int(label)


class VEDataset(ImageTextDataset):
    """`{image, sentence, label}`; labels as the original: contradiction 0, neutral 1, entailment 2."""

    def __init__(self, files, image_root, transform, max_words: int = 30, **kw):
        entries = F.read_entries(files, F.VE)
        for i, e in enumerate(entries):
            if e["label"] not in F.VE_LABELS:
                raise ValueError(f"{files}[{i}]: label {e['label']!r} is not one of {list(F.VE_LABELS)}")
            if not Path(e["image"]).suffix:  # the original stores Flickr ids without extension
                e["image"] = e["image"] + ".jpg"
        super().__init__(entries, image_root, transform, **kw)
        self.max_words = max_words

    def load(self, i: int):
        e = self.entries[i]
        img, (sentence,) = self._image(self.root / e["image"], [F.pre_caption(e["sentence"], self.max_words)])
        return img, sentence, F.VE_LABELS[e["label"]]


class GroundingDataset(ImageTextDataset):
    """`{image, text, ref_id}`; returns (image, text, ref_id), or with train=True (image, text, image index)
    so that expressions of the same image are ITC positives."""

    def __init__(self, files, image_root, transform, max_words: int = 30, train: bool = False, **kw):
        super().__init__(F.read_entries(files, F.GROUNDING), image_root, transform, **kw)
        self.max_words, self.train = max_words, train
        index = {k: i for i, k in enumerate(dict.fromkeys(e["image"] for e in self.entries))}
        self.image_index = [index[e["image"]] for e in self.entries]

    def load(self, i: int):
        e = self.entries[i]
        img, (text,) = self._image(self.root / e["image"], [F.pre_caption(e["text"], self.max_words)])
        return img, text, self.image_index[i] if self.train else int(e.get("ref_id", -1))


def vqa_collate(batch: list) -> tuple:
    """Flattens the answers of a batch and records how many each question has (k)."""
    images, questions, answers, weights, k = [], [], [], [], []
    for img, q, ans, w in batch:
        images.append(img)
        questions.append(q)
        answers += ans
        weights += w
        k.append(len(ans))
    return torch.stack(images), questions, answers, torch.tensor(weights), k


BLIND_MODES = ("shuffle", "blank")


class BlindImages(Dataset):
    """The image-blind control of an evaluation set: every image of item i replaced by that of another item
    (`shuffle`, a fixed permutation with no fixed point) or by a blank (`blank`: all zeros, the mean colour
    after normalisation); texts and labels stay. A score no better than this one did not need the image."""

    def __init__(self, dataset: Dataset, mode: str, seed: int = 0):
        if mode not in BLIND_MODES:
            raise ValueError(f"unknown image-blind mode {mode!r}; choose one of {list(BLIND_MODES)}")
        self.dataset, self.mode = dataset, mode
        n = len(dataset)
        order = list(range(n))
        random.Random(seed).shuffle(order)
        self.source = [0] * n  # a cycle through a shuffled order: nobody keeps its own image
        for a, b in zip(order, order[1:] + order[:1], strict=True):
            self.source[a] = b

    def __len__(self) -> int:
        return len(self.dataset)

    def __getattr__(self, name: str):
        if name == "dataset":  # not set yet (unpickling): no recursion
            raise AttributeError(name)
        return getattr(self.dataset, name)

    def __getitem__(self, index: int):
        item = self.dataset[index]
        donor = self.dataset[self.source[index]] if self.mode == "shuffle" else item
        return tuple(torch.zeros_like(v) if self.mode == "blank" and _is_image(v) else
                     (d if _is_image(v) else v) for v, d in zip(item, donor, strict=True))


def _is_image(value) -> bool:
    return isinstance(value, torch.Tensor) and value.dim() == 3
