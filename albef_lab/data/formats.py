"""Readers for the official annotation formats (the same code reads real data and ShapesWorld).

Every reader validates its entries and names the file and index of a malformed one.
"""

from __future__ import annotations

import json
import pickle
import re
from pathlib import Path
from typing import Any

_PUNCT = re.compile(r"([,.'!?\"()*#:;~])")


def pre_caption(caption: str, max_words: int = 30) -> str:
    """Lower-case, strip punctuation, '-' and '/' to spaces, collapse spaces, keep max_words (as the original)."""
    text = _PUNCT.sub("", caption.lower()).replace("-", " ").replace("/", " ").replace("<person>", "person")
    text = re.sub(r"\s{2,}", " ", text).rstrip("\n").strip(" ")
    words = text.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else text


def pre_question(question: str, max_words: int = 50) -> str:
    text = _PUNCT.sub("", question.lower()).replace("-", " ").replace("/", " ").rstrip(" ")
    words = text.split(" ")
    return " ".join(words[:max_words]) if len(words) > max_words else text


def resolve(root: str | Path, name: str | Path) -> Path:
    """`name` itself when absolute, else relative to the data root."""
    p = Path(name)
    return p if p.is_absolute() else Path(root) / p


def read_json(path: str | Path) -> Any:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"annotation file not found: {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: invalid JSON at line {e.lineno}, column {e.colno}: {e.msg}") from e


def _check(entries: Any, path: Path, required: dict[str, type | tuple]) -> list[dict]:
    if not isinstance(entries, list):
        raise ValueError(f"{path}: expected a JSON list of entries, found {type(entries).__name__}")
    for i, e in enumerate(entries):
        if not isinstance(e, dict):
            raise ValueError(f"{path}[{i}]: expected an object, found {type(e).__name__}")
        for key, kind in required.items():
            if key not in e:
                raise ValueError(f"{path}[{i}]: missing key {key!r} (entry: {json.dumps(e)[:200]})")
            if not isinstance(e[key], kind):
                raise ValueError(f"{path}[{i}]: {key!r} should be {kind}, found {type(e[key]).__name__}")
        if "caption" in required and isinstance(e["caption"], list) and not e["caption"]:
            raise ValueError(f"{path}[{i}]: empty caption list")
    return entries


def read_entries(files: str | Path | list, required: dict[str, type | tuple]) -> list[dict]:
    files = [files] if isinstance(files, str | Path) else list(files)
    out: list[dict] = []
    for f in files:
        out += _check(read_json(f), Path(f), required)
    return out


PRETRAIN = {"image": str, "caption": (str, list)}
RETRIEVAL_TRAIN = {"image": str, "caption": str, "image_id": (str, int)}
RETRIEVAL_EVAL = {"image": str, "caption": list}
VQA_TRAIN = {"image": str, "question": str, "answer": (list, str)}
VQA_TEST = {"image": str, "question": str, "question_id": (int, str)}
NLVR = {"images": list, "sentence": str, "label": (str, bool)}
VE = {"image": str, "sentence": str, "label": str}
GROUNDING = {"image": str, "text": str}
VE_LABELS = {"contradiction": 0, "neutral": 1, "entailment": 2}


class _PlainUnpickler(pickle.Unpickler):
    """Refuses every class: the official refs(unc).p holds only dicts, lists, strings and numbers."""

    def find_class(self, module: str, name: str):
        raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a refs pickle")


def read_refer(directory: str | Path) -> dict:
    """RefCOCO+ in the original layout: refs (refs.json or refs(unc).p), instances.json, dets.json.

    Returns {'refs': {ref_id: ref}, 'anns': {ann_id: ann}, 'images': {image_id: image}, 'dets': {image_id: boxes}}.
    """
    d = Path(directory)
    if not d.is_dir():
        raise FileNotFoundError(f"RefCOCO+ folder not found: {d}")
    if (d / "refs.json").is_file():
        refs = read_json(d / "refs.json")
    elif (d / "refs(unc).p").is_file():
        with open(d / "refs(unc).p", "rb") as f:
            refs = _PlainUnpickler(f).load()
    else:
        raise FileNotFoundError(f"{d}: neither refs.json nor refs(unc).p")
    instances = read_json(d / "instances.json")
    dets_file = d / "dets.json"
    dets = read_json(dets_file)
    for i, r in enumerate(refs):
        for key in ("ref_id", "image_id", "ann_id", "split"):
            if key not in r:
                raise ValueError(f"{d}/refs[{i}]: missing key {key!r}")
    anns = {a["id"]: a for a in instances["annotations"]}
    images = {im["id"]: im for im in instances["images"]}
    for r in refs:
        if r["ann_id"] not in anns:
            raise ValueError(f"{d}: ref {r['ref_id']} points to annotation {r['ann_id']} missing from instances.json")
    return {"refs": {r["ref_id"]: r for r in refs}, "anns": anns, "images": images,
            "dets": {int(k): v for k, v in dets.items()}}
