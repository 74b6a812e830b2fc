"""Rank a folder of images for a text with the files of `albef-lab export onnx`: onnxruntime, numpy, Pillow and
tokenizers only (no torch).

    python examples/onnx_gallery.py EXPORT_DIR IMAGE_FOLDER "a red circle" [--k 5]

ITC similarity picks the k nearest images; the ITM head re-ranks them by match probability, as the workbench does.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
from PIL import Image
from tokenizers import BertWordPieceTokenizer

SUFFIXES = {".png", ".jpg", ".jpeg", ".bmp", ".webp"}


class Ranker:
    def __init__(self, export_dir: str | Path):
        d = Path(export_dir)
        self.m = json.loads((d / "albef_onnx.json").read_text())
        self.parts = {k: ort.InferenceSession(str(d / f), providers=["CPUExecutionProvider"])
                      for k, f in self.m["files"].items()}
        self.tok = BertWordPieceTokenizer(str(d / "vocab.txt"), lowercase=True)

    def pixels(self, path: Path) -> np.ndarray:
        """The evaluation transform: bicubic resize to the model's size, then the model's normalisation."""
        res = self.m["image_res"]
        x = np.asarray(Image.open(path).convert("RGB").resize((res, res), Image.BICUBIC), np.float32) / 255
        return ((x - np.float32(self.m["mean"])) / np.float32(self.m["std"])).transpose(2, 0, 1)

    def tokens(self, text: str) -> tuple[np.ndarray, np.ndarray]:
        """[CLS] then the words, no [SEP] (the original's convention), truncated to max_tokens."""
        ids = [self.m["cls_token_id"], *self.tok.encode(" ".join(text.split()), add_special_tokens=False).ids]
        ids = np.array([ids[: self.m["max_tokens"]]], np.int64)
        return ids, np.ones_like(ids)

    def encode(self, paths: list[Path]) -> tuple[np.ndarray, np.ndarray]:
        """(image states, ITC features) of a few images."""
        return tuple(self.parts["image"].run(None, {"image": np.stack([self.pixels(p) for p in paths])}))

    def index(self, paths: list[Path], batch: int = 32) -> np.ndarray:
        """ITC features of every image (only these are kept: a gallery's states would be large)."""
        return np.concatenate([self.encode(paths[a:a + batch])[1] for a in range(0, len(paths), batch)])

    def rank(self, text: str, paths: list[Path], feats: np.ndarray, k: int = 5) -> list[tuple[str, float, float]]:
        """(path, ITC similarity, ITM match probability) of the k best images by ITC, re-ranked by ITM."""
        ids, mask = self.tokens(text)
        text_states, text_feat = self.parts["text"].run(None, {"input_ids": ids, "attention_mask": mask})
        sims = feats @ text_feat[0]
        top = np.argsort(-sims, kind="stable")[:k]
        n = len(top)
        logits = self.parts["itm"].run(None, {"text_states": np.repeat(text_states, n, 0),
                                              "attention_mask": np.repeat(mask, n, 0),
                                              "image_states": self.encode([paths[i] for i in top])[0]})[0]
        e = np.exp(logits - logits.max(1, keepdims=True))
        match = e[:, 1] / e.sum(1)
        rows = [(str(paths[i]), float(sims[i]), float(p)) for i, p in zip(top, match, strict=True)]
        return sorted(rows, key=lambda r: -r[2])


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("export_dir")
    ap.add_argument("images")
    ap.add_argument("text")
    ap.add_argument("--k", type=int, default=5)
    a = ap.parse_args()
    paths = sorted(p for p in Path(a.images).iterdir() if p.suffix.lower() in SUFFIXES)
    ranker = Ranker(a.export_dir)
    for path, itc, itm in ranker.rank(a.text, paths, ranker.index(paths), a.k):
        print(f"{itm:.3f}  {itc:+.3f}  {path}")


if __name__ == "__main__":
    main()
