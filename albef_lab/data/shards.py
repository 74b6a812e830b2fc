"""Pre-training from WebDataset tar shards (`data.shards`), as img2dataset writes them: `KEY.jpg` (or .png, .webp)
beside `KEY.txt` and / or `KEY.json`, shards named by a brace pattern such as `pairs/{00000..00099}.tar`.

The shards are indexed (wids) so that each sample is an index, like a JSON entry: the engine's seeded sampler
splits an epoch over ranks and workers (each sample read once), the checkpoint's position resumes a killed run to
the sample, and augmentation draws stay a function of (seed, epoch, index). Only captions and metadata are read
up front; image bytes are read when a sample is loaded. `export_shards` writes them from the official JSON.
"""

from __future__ import annotations

import glob
import json
import os
import random
import tempfile
import warnings
from pathlib import Path

from braceexpand import braceexpand
from tqdm import tqdm

from albef_lab.data import formats as F
from albef_lab.data.datasets import ImageTextDataset, image_indices, read_bytes
from albef_lab.data.transforms import ImageTextTransform

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")


def shard_files(pattern: str) -> list[Path]:
    """The files of a brace pattern (`a-{000..009}.tar`), each part also a glob; missing ones are an error."""
    files, missing = [], []
    for part in braceexpand(pattern):
        found = sorted(glob.glob(part)) if glob.has_magic(part) else ([part] if Path(part).is_file() else [])
        files += found
        if not found:
            missing.append(part)
    if missing:
        raise FileNotFoundError(f"{len(missing)} shard(s) of {pattern} not found, e.g. {missing[:3]}")
    return [Path(f) for f in files]


def _open(path: Path):
    from wids.wids import IndexedTarSamples

    return IndexedTarSamples(path=str(path))


class ShardPretrainDataset(ImageTextDataset):
    """Pre-training pairs from tar shards; returns (image, caption, index of the image) as `PretrainDataset`.

    A shard that cannot be indexed (truncated, not a tar) and a sample without an image or a caption are skipped
    when the dataset is built, counted in `bad_shards` / `bad_samples` and said once; an image whose bytes do not
    decode is skipped when it is loaded (`skipped`, as for image files)."""

    def __init__(self, pattern: str, transform: ImageTextTransform, max_words: int = 30):
        self.files = shard_files(pattern)
        super().__init__([], self.files[0].parent, transform, check_files=False)
        self.max_words = max_words
        self.members: list[tuple[int, int, int]] = []  # (shard, first file of the sample, its image file)
        self.bad_shards: dict[str, str] = {}
        self.bad_samples: dict[str, str] = {}
        for s, path in enumerate(self.files):
            try:
                tar = _open(path)
            except Exception as e:  # wids raises struct / value / OS errors on a damaged tar
                self.bad_shards[path.name] = f"{type(e).__name__}: {e}"
                continue
            names = list(tar.reader.names())
            for files in tar.samples:
                key = _split(names[files[0]])[0]
                try:
                    entry, image = _entry(tar, names, files)
                except ValueError as e:
                    self.bad_samples[f"{path.name}:{key}"] = str(e)
                    continue
                entry["__member__"] = f"{path.name}:{key}"
                self.entries.append(entry)
                self.members.append((s, files[0], image))
            tar.close()
        for what, bad in (("shard", self.bad_shards), ("sample", self.bad_samples)):
            if bad:
                first = next(iter(bad.items()))
                warnings.warn(f"skipped {len(bad)} unreadable {what}(s) of {pattern}, e.g. {first[0]}: {first[1]}",
                              stacklevel=2)
        if not self.entries:
            raise ValueError(f"no readable sample in the {len(self.files)} shard(s) of {pattern}")
        self.image_index, self.image_files = image_indices(self.entries)
        self._tars: dict[int, object] = {}
        self._pid = os.getpid()

    def entry_paths(self, entry: dict) -> list[Path]:
        return [Path(entry["__member__"])]  # `shard.tar:key`, for messages

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_tars": {}}  # a worker opens its own memory maps

    def _tar(self, s: int):
        if self._pid != os.getpid():  # a forked worker: the parent's maps stay the parent's
            self._tars, self._pid = {}, os.getpid()
        if s not in self._tars:
            self._tars[s] = _open(self.files[s])
        return self._tars[s]

    def load(self, i: int):
        e = self.entries[i]
        s, _, image = self.members[i]
        cap = e["caption"] if isinstance(e["caption"], str) else random.choice(e["caption"])
        data = self._tar(s).reader.get_file(image)[1].getvalue()
        img, (cap,) = self.transform(self.decode(data, e["__member__"]), [F.pre_caption(cap, self.max_words)])
        return img, cap, self.image_index[i]


def _split(name: str) -> tuple[str, str]:
    """`dir/KEY.ext.gz` -> (`dir/KEY`, `.ext.gz`): WebDataset's key is the name up to its first dot."""
    folder, _, base = name.rpartition("/")
    key, dot, ext = base.partition(".")
    return f"{folder}/{key}" if folder else key, dot + ext


def _entry(tar, names: list[str], files: list[int]) -> tuple[dict, int]:
    """A sample's entry (its .json, else its .txt as the caption) and the index of its image file."""
    ext = {_split(names[i])[1].lower(): i for i in files}
    image = next((ext[x] for x in IMAGE_EXTS if x in ext), None)
    if image is None:
        raise ValueError(f"no image ({', '.join(IMAGE_EXTS)}) among {sorted(ext)}")
    entry: dict = {}
    if ".json" in ext:
        try:
            entry = json.loads(tar.reader.get_file(ext[".json"])[1].getvalue())
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise ValueError(f"its .json does not parse ({e})") from None
        if not isinstance(entry, dict):
            raise ValueError("its .json is not an object")
    if not isinstance(entry.get("caption"), str | list) and ".txt" in ext:
        entry["caption"] = tar.reader.get_file(ext[".txt"])[1].getvalue().decode("utf-8", "replace")
    cap = entry.get("caption")
    if not (isinstance(cap, str) and cap.strip()) and not (isinstance(cap, list) and cap and all(
            isinstance(c, str) and c.strip() for c in cap)):
        raise ValueError("no caption (.txt, or a non-empty 'caption' in .json)")
    entry.setdefault("image", names[image])
    return entry, image


def export_shards(files: str | Path | list, image_root: str | Path, out: str | Path, per_shard: int = 1000,
                  prefix: str = "shard", progress: bool = True) -> tuple[str, int]:
    """The official pre-training JSON + image folder as tar shards in `out` (one sample per entry: the image's
    bytes as they are, the caption as .txt, the entry as .json). Written beside `out`, moved in when complete.
    Returns (the brace pattern that reads them, the number of samples)."""
    import webdataset as wds

    entries = F.read_entries(files, F.PRETRAIN)
    root, out = Path(image_root), Path(out)
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=".shards-", dir=out) as tmp:
        with wds.ShardWriter(f"{tmp}/{prefix}-%05d.tar", maxcount=per_shard, verbose=0) as sink:
            for i, e in enumerate(tqdm(entries, desc="writing shards", unit="sample", disable=not progress)):
                path = root / e["image"]
                ext = path.suffix.lower().lstrip(".")
                if f".{ext}" not in IMAGE_EXTS:
                    raise ValueError(f"{path}: shards hold {', '.join(IMAGE_EXTS)} images, not .{ext}")
                caption = e["caption"] if isinstance(e["caption"], str) else e["caption"][0]
                sink.write({"__key__": f"{i:09d}", ext: read_bytes(path), "txt": caption, "json": e})
        written = sorted(Path(tmp).glob(f"{prefix}-*.tar"))
        for f in written:
            f.replace(out / f.name)
    last = len(written) - 1
    return f"{out.resolve()}/{prefix}-{{{0:05d}..{last:05d}}}.tar", len(entries)
