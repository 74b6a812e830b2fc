"""Your own images and captions: a CSV or JSONL of `image,caption` rows (image paths relative to the file), or a
folder of images with one such file in it, turned into the official retrieval files the tasks read."""

from __future__ import annotations

import csv
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from albef_lab.files import write_text_atomic

TABLE_SUFFIXES = (".csv", ".jsonl")


@dataclass
class Row:
    where: str  # file:line
    image: Path
    caption: str


@dataclass
class Pairs:
    """Training rows and validation images (every caption of an image together), with what was dropped and why."""

    train: list[Row]
    val: list[Row]
    notes: list[str] = field(default_factory=list)

    def write(self, out: str | Path) -> tuple[Path, Path]:
        """The official retrieval files (`coco_train.json` / `coco_val.json` layouts) in `out`."""
        out = Path(out)
        ids = {p: i for i, p in enumerate(dict.fromkeys(r.image for r in self.train + self.val))}
        train = [{"image": str(r.image), "caption": r.caption, "image_id": ids[r.image]} for r in self.train]
        by_image: dict[Path, list[str]] = {}
        for r in self.val:
            by_image.setdefault(r.image, []).append(r.caption)
        val = [{"image": str(p), "caption": caps} for p, caps in by_image.items()]
        files = out / "train.json", out / "val.json"
        for path, entries in zip(files, (train, val), strict=True):
            path.parent.mkdir(parents=True, exist_ok=True)
            write_text_atomic(path, json.dumps(entries, indent=1))
        return files


def find_table(path: str | Path) -> Path:
    """The CSV / JSONL itself, or the one such file in a folder."""
    path = Path(path)
    if path.is_file():
        if path.suffix.lower() not in TABLE_SUFFIXES:
            raise ValueError(f"{path}: expected a .csv or .jsonl file of image,caption rows")
        return path
    if not path.is_dir():
        raise FileNotFoundError(f"data not found: {path}")
    tables = sorted(p for p in path.iterdir() if p.suffix.lower() in TABLE_SUFFIXES)
    if len(tables) != 1:
        found = ", ".join(p.name for p in tables) or "none"
        raise ValueError(f"{path}: expected one .csv or .jsonl file of image,caption rows beside the images "
                         f"(found: {found}); or give the file itself")
    return tables[0]


def read_rows(table: Path) -> list[Row]:
    """Every row, checked: a malformed row or an empty caption names its file and line."""
    rows = []
    if table.suffix.lower() == ".csv":
        with open(table, newline="", encoding="utf-8-sig") as f:
            reader = csv.reader(f)
            header = [h.strip().lower() for h in next(reader, [])]
            if "image" not in header or "caption" not in header:
                raise ValueError(f"{table}:1: the header must name the columns image and caption (found: "
                                 f"{','.join(header) or 'nothing'})")
            at_image, at_caption = header.index("image"), header.index("caption")
            for values in reader:
                where = f"{table}:{reader.line_num}"
                if not any(v.strip() for v in values):
                    continue
                if len(values) != len(header):
                    raise ValueError(f"{where}: {len(values)} fields where the header has {len(header)} "
                                     f"({','.join(header)}); quote a caption that holds a comma")
                rows.append(_row(where, table, values[at_image], values[at_caption]))
    else:
        for n, line in enumerate(table.read_text(encoding="utf-8").splitlines(), start=1):
            if not line.strip():
                continue
            where = f"{table}:{n}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: invalid JSON ({e.msg}, column {e.colno})") from None
            if not isinstance(obj, dict) or not isinstance(obj.get("image"), str) or "caption" not in obj:
                raise ValueError(f'{where}: expected {{"image": "...", "caption": "..."}}, found {line[:120]}')
            if not isinstance(obj["caption"], str):
                raise ValueError(f"{where}: the caption should be a string, found {type(obj['caption']).__name__}")
            rows.append(_row(where, table, obj["image"], obj["caption"]))
    if not rows:
        raise ValueError(f"{table}: no rows")
    return rows


def _row(where: str, table: Path, image: str, caption: str) -> Row:
    if not image.strip():
        raise ValueError(f"{where}: no image path")
    if not caption.strip():
        raise ValueError(f"{where}: empty caption")
    path = Path(image.strip())
    return Row(where, path if path.is_absolute() else (table.parent / path).resolve(), " ".join(caption.split()))


def _unreadable(path: Path) -> str | None:
    try:
        with Image.open(path) as im:
            im.verify()
    except (OSError, SyntaxError, ValueError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def path_hash(image: Path, root: Path) -> float:
    """A number in [0, 1) from the image's path relative to the table: the same on every machine."""
    name = image.relative_to(root).as_posix() if image.is_relative_to(root) else image.as_posix()
    return int(hashlib.sha256(name.encode()).hexdigest()[:8], 16) / 16**8


def held_out(image: Path, root: Path, share: float) -> bool:
    return path_hash(image, root) < share


def load_pairs(data: str | Path, val: str | Path | None = None, val_share: float = 0.1) -> Pairs:
    """Rows of `data` (and `val`), checked: duplicates dropped, missing images an error, unreadable ones skipped;
    with no `val`, a share of the images (by a hash of the path) is held out for validation."""
    table = find_table(data)
    rows, notes = read_rows(table), []
    seen: dict[tuple[Path, str], str] = {}
    kept, duplicates = [], []
    for r in rows:
        first = seen.setdefault((r.image, r.caption.lower()), r.where)
        (kept if first == r.where else duplicates).append(r)
    if duplicates:
        first = duplicates[0]
        notes.append(f"{len(duplicates)} duplicate row(s) dropped (the first: {first.where}, as "
                     f"{seen[(first.image, first.caption.lower())]})")
    val_rows = read_rows(find_table(val)) if val is not None else None
    every = kept + (val_rows or [])
    missing = [r for r in every if not r.image.is_file()]
    if missing:
        first = ", ".join(f"{r.image.name} ({r.where})" for r in missing[:3])
        raise FileNotFoundError(f"{len({r.image for r in missing})} of {len({r.image for r in every})} images are "
                                f"missing; the first: {first}")
    bad = {p: why for p in dict.fromkeys(r.image for r in every) if (why := _unreadable(p))}
    if bad:
        shown = "; ".join(f"{p.name}: {why}" for p, why in list(bad.items())[:5])
        notes.append(f"{len(bad)} unreadable image(s) skipped: {shown}" + (" ..." if len(bad) > 5 else ""))
        kept = [r for r in kept if r.image not in bad]
        val_rows = None if val_rows is None else [r for r in val_rows if r.image not in bad]
    if val_rows is None:
        root = table.parent.resolve()
        images = list(dict.fromkeys(r.image for r in kept))
        out = {p for p in images if held_out(p, root, val_share)}
        if not out and len(images) > 1:
            out = {min(images, key=lambda p: path_hash(p, root))}  # a small set: the one of the lowest hash
        val_rows, kept = [r for r in kept if r.image in out], [r for r in kept if r.image not in out]
        notes.append(f"no validation file given: {len(out)} of {len(images)} images ({len(val_rows)} captions) held "
                     f"out by a hash of their path, the same on every run")
    if not kept or not val_rows:
        raise ValueError(f"{table}: {len(kept)} training and {len(val_rows)} validation rows left; both need some")
    return Pairs(kept, val_rows, notes)
