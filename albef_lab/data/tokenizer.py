"""WordPiece tokenizers that follow the original's convention, loaded only from local files.

The original writes one sentence as `[CLS] tokens` with NO trailing `[SEP]` (VQA answers get the
text "[SEP]" appended, which stays a special token). Token type ids are always 0, so none are returned.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

SPECIALS = {"[PAD]": 0, "[UNK]": 100, "[CLS]": 101, "[SEP]": 102, "[MASK]": 103}


def build_vocab(words: list[str]) -> list[str]:
    """BERT's special tokens at BERT's ids (so configs need no change), then the given words."""
    vocab = ["[PAD]"] + [f"[unused{i}]" for i in range(99)] + ["[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    return vocab + sorted(set(words) - set(vocab))


def write_vocab(path: str | Path, words: list[str]) -> Path:
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    (path / "vocab.txt").write_text("\n".join(build_vocab(words)) + "\n")
    return path


def _hf_cache_dirs(name: str) -> list[Path]:
    """Where a model downloaded earlier by huggingface_hub would lie (nothing is fetched)."""
    home = Path(os.environ.get("HF_HOME", Path.home() / ".cache" / "huggingface"))
    hub = Path(os.environ.get("HF_HUB_CACHE", home / "hub"))
    root = hub / f"models--{name.replace('/', '--')}" / "snapshots"
    return sorted(root.glob("*"), reverse=True) if root.is_dir() else []


class Tokenizer:
    """Callable: `tok(texts, max_length) -> (input_ids [B, L], attention_mask [B, L])`."""

    def __init__(self, directory: str | Path):
        from transformers import BertTokenizer

        directory = Path(directory)
        if not (directory / "vocab.txt").is_file():
            raise FileNotFoundError(f"no vocab.txt in {directory}")
        self.directory = directory
        self.hf = BertTokenizer.from_pretrained(str(directory), local_files_only=True)
        vocab = self.hf.get_vocab()
        if vocab.get("[UNK]") is None or len(vocab) < 5:
            raise ValueError(f"{directory}/vocab.txt is not a WordPiece vocabulary with BERT's special tokens")
        self.pad_token_id = self.hf.pad_token_id
        self.cls_token_id = self.hf.cls_token_id
        self.sep_token_id = self.hf.sep_token_id
        self.mask_token_id = self.hf.mask_token_id
        self.vocab_size = len(vocab)

    def encode(self, text: str) -> list[int]:
        return [self.cls_token_id] + self.hf(text, add_special_tokens=False)["input_ids"]

    def __call__(self, texts: list[str] | str, max_length: int | None = None,
                 padding: str = "longest") -> tuple[Tensor, Tensor]:
        if isinstance(texts, str):
            texts = [texts]
        seqs = [self.encode(t) for t in texts]
        if max_length is not None:
            seqs = [s[:max_length] for s in seqs]
        width = max_length if padding == "max_length" and max_length else max(len(s) for s in seqs)
        ids = torch.full((len(seqs), width), self.pad_token_id, dtype=torch.long)
        mask = torch.zeros((len(seqs), width), dtype=torch.long)
        for i, s in enumerate(seqs):
            ids[i, : len(s)] = torch.tensor(s, dtype=torch.long)
            mask[i, : len(s)] = 1
        return ids, mask

    def decode(self, ids: list[int] | Tensor) -> str:
        if torch.is_tensor(ids):
            ids = ids.tolist()
        return self.hf.decode([i for i in ids if i not in (self.pad_token_id, self.cls_token_id)])


def load_tokenizer(name_or_path: str | Path) -> Tokenizer:
    """A local directory with vocab.txt, or a name (e.g. `bert-base-uncased`) already in the local HF cache."""
    path = Path(name_or_path)
    if path.is_dir():
        return Tokenizer(path)
    for snapshot in _hf_cache_dirs(str(name_or_path)):
        if (snapshot / "vocab.txt").is_file():
            return Tokenizer(snapshot)
    raise FileNotFoundError(
        f"tokenizer {str(name_or_path)!r} not found locally (albef-lab never downloads at run time).\n"
        "Give a directory that holds vocab.txt (e.g. a copy of bert-base-uncased: "
        "`huggingface-cli download bert-base-uncased vocab.txt --local-dir DIR` on a machine with network), "
        "or put the model in the Hugging Face cache first.")
