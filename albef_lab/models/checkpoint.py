"""Reading and writing checkpoints: the official release's files and our own.

Official files are `{'model': state_dict, ...}` with the key names of `../shared/reference/keys/`.
Loading is strict by default and always reports what was missing, unexpected or resized.
"""

from __future__ import annotations

import math
import os
import pickle
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn


class CheckpointError(RuntimeError):
    pass


def read_file(path: str | Path, trust_pickle: bool = False) -> dict:
    """torch.load with weights_only=True; `trust_pickle=True` allows arbitrary objects (trusted files only)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        raise CheckpointError(
            f"{path} holds Python objects that a safe load (weights_only=True) refuses: {e}\n"
            "If you trust where this file comes from, load it with trust_pickle=True "
            "(CLI: --trust-pickle).") from e
    except (RuntimeError, EOFError) as e:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {e}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(obj).__name__}")
    return obj


def state_dict_of(obj: dict, path: str | Path = "<checkpoint>") -> dict[str, Tensor]:
    """The state dict inside a checkpoint: `obj['model']` (official and ours) or the dict itself."""
    for key in ("model", "state_dict"):
        if key in obj and isinstance(obj[key], dict):
            obj = obj[key]
            break
    if not all(torch.is_tensor(v) for v in obj.values()):
        bad = [k for k, v in obj.items() if not torch.is_tensor(v)][:5]
        raise CheckpointError(f"{path}: no state dict found (non-tensor entries {bad}); "
                              "expected {'model': state_dict, ...}")
    return obj


def resize_pos_embed(pos_embed: Tensor, num_patches: int) -> Tensor:
    """Bicubic resize of a ViT position table [1, 1 + n, D] to a square grid of `num_patches`."""
    old = pos_embed.shape[1] - 1
    old_side, new_side = math.isqrt(old), math.isqrt(num_patches)
    if old_side * old_side != old or new_side * new_side != num_patches:
        raise ValueError(f"cannot resize position embeddings: {old} -> {num_patches} patches are not square grids")
    if old == num_patches:
        return pos_embed
    cls_pos, grid = pos_embed[:, :1], pos_embed[:, 1:]
    d = grid.shape[-1]
    grid = grid.reshape(1, old_side, old_side, d).permute(0, 3, 1, 2).float()
    grid = F.interpolate(grid, size=(new_side, new_side), mode="bicubic", align_corners=False)
    grid = grid.permute(0, 2, 3, 1).reshape(1, num_patches, d).to(pos_embed.dtype)
    return torch.cat([cls_pos, grid], dim=1)


@dataclass
class LoadReport:
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    resized: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)

    @property
    def clean(self) -> bool:
        return not (self.missing or self.unexpected or self.mismatched)

    def __str__(self) -> str:
        def part(title: str, keys: list[str]) -> str:
            shown = ", ".join(keys[:8]) + (f", ... ({len(keys)} in all)" if len(keys) > 8 else "")
            return f"  {title} ({len(keys)}): {shown}" if keys else f"  {title}: none"
        return "\n".join(["checkpoint load report:", part("missing", self.missing),
                          part("unexpected", self.unexpected), part("shape mismatch", self.mismatched),
                          part("resized position embeddings", self.resized)])


def load_into(model: nn.Module, state_dict: dict[str, Tensor], strict: bool = True,
              verbose: bool = True) -> LoadReport:
    """Load with position embeddings resized to the model's image size; strict = nothing missing/extra."""
    own = model.state_dict()
    report = LoadReport()
    sd = dict(state_dict)
    for key, value in list(sd.items()):
        if key not in own:
            continue
        if key.endswith("pos_embed") and value.shape != own[key].shape and value.dim() == 3:
            sd[key] = resize_pos_embed(value, own[key].shape[1] - 1)
            report.resized.append(f"{key} {tuple(value.shape)} -> {tuple(own[key].shape)}")
        elif value.shape != own[key].shape:
            report.mismatched.append(f"{key} {tuple(value.shape)} vs model {tuple(own[key].shape)}")
            del sd[key]
    report.missing = [k for k in own if k not in sd and k not in {m.split(" ")[0] for m in report.mismatched}]
    report.unexpected = [k for k in sd if k not in own]
    if strict and not report.clean:
        raise CheckpointError(f"checkpoint does not fit {type(model).__name__} (strict load)\n{report}")
    model.load_state_dict({k: v for k, v in sd.items() if k in own}, strict=False)
    if verbose:
        print(report)
    return report


def save_atomic(obj: dict, path: str | Path) -> None:
    """Write to a temporary file in the same folder, fsync, then rename: a crash leaves the old file."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
