"""Reading and writing checkpoints: the official release's files and our own.

Official files are `{'model': state_dict, ...}` with the key names of `../shared/reference/keys/`.
Loading is strict by default and always reports what was missing, unexpected or resized.
"""

from __future__ import annotations

import math
import pickle
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from albef_lab.config import ModelConfig
from albef_lab.files import atomic_file


class CheckpointError(RuntimeError):
    pass


def read_file(path: str | Path, trust_pickle: bool = False) -> dict:
    """torch.load with weights_only=True; `trust_pickle=True` allows arbitrary objects (trusted files only).

    Three failures are told apart: not a PyTorch file at all, a damaged (e.g. truncated) one, and a real
    checkpoint that holds Python objects a safe load refuses.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    with open(path, "rb") as f:
        head = f.read(4)
    is_zip, is_pickle = head.startswith(b"PK\x03\x04"), head[:1] == b"\x80"
    if not (is_zip or is_pickle):
        raise CheckpointError(f"{path} is not a PyTorch checkpoint: it starts with {head!r}, not with the zip "
                              "archive (or pickle) that torch.save writes")
    try:
        obj = torch.load(path, map_location="cpu", weights_only=not trust_pickle)
    except pickle.UnpicklingError as e:
        if is_zip and not _zip_intact(path) or "Weights only load failed" not in str(e):
            raise CheckpointError(f"{path} is damaged (truncated or corrupt?): {e}") from e
        raise CheckpointError(
            f"{path} holds Python objects that a safe load (weights_only=True) refuses: {e}\n"
            "If you trust where this file comes from, load it with "
            "albef_lab.models.checkpoint.read_file(path, trust_pickle=True) and save its state dict with "
            "torch.save({'model': state_dict}, new_path).") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile) as e:
        raise CheckpointError(f"{path} is not a readable PyTorch checkpoint (truncated or corrupt?): {e}") from e
    if not isinstance(obj, dict):
        raise CheckpointError(f"{path}: expected a dict, found {type(obj).__name__}")
    return obj


def _zip_intact(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as z:
            return z.testzip() is None
    except (zipfile.BadZipFile, OSError):
        return False


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
    """torch.save through `atomic_file`: a crash leaves the old file."""
    with atomic_file(path) as f:
        torch.save(obj, f)


@dataclass
class Recognised:
    """What a checkpoint file was found to be."""

    path: str
    task: str  # the model it holds: pretrain, retrieval, vqa, ... (official files: from their keys)
    config: ModelConfig
    state_dict: dict[str, Tensor]
    ours: bool  # one of ours (its config travels inside) or an official file
    inferred: list[str] = field(default_factory=list)  # what was not in the file, and where it came from


def official_task(sd: dict[str, Tensor], path: str | Path = "<checkpoint>") -> str:
    """Which model an official file holds, from its keys (ALBEF.pth, mscoco.pth / refcoco.pth, vqa.pth, ...)."""
    keys = set(sd)
    if any(k.startswith("text_decoder.") for k in keys):
        return "vqa"
    if any(k.startswith("text_encoder.bert.") for k in keys):
        return "pretrain"
    if "ta_head.weight" in keys:
        return "pretrain_nlvr"
    if "cls_head.2.weight" in keys:  # NLVR2 tells 2 classes, SNLI-VE 3
        return "nlvr" if sd["cls_head.2.weight"].shape[0] == 2 else "ve"
    if "itm_head.weight" in keys:
        return "retrieval"
    raise CheckpointError(f"{path}: its keys fit none of the ALBEF models (looked for text_decoder.*, "
                          "text_encoder.bert.*, ta_head.*, cls_head.*, itm_head.*)")


def recognise(path: str | Path, arch: ModelConfig | None = None, infer_image_size: bool = True) -> Recognised:
    """Read a checkpoint once and say what it is: ours (the model config inside) or an official one, whose
    architecture is `arch` (a preset's) and whose image size is read off its position table. The error names the
    file and what did not fit."""
    import copy

    from albef_lab.config import model_config_from_dict

    obj = read_file(path)
    if isinstance(obj.get("config"), dict) and "vision" in obj["config"]:
        return Recognised(str(path), obj.get("model_name", "pretrain"), model_config_from_dict(obj["config"]),
                          state_dict_of(obj, path), ours=True)
    sd = state_dict_of(obj, path)
    if arch is None:
        raise CheckpointError(f"{path} holds no albef-lab config: say which architecture it has (a preset, e.g. "
                              "--preset base)")
    cfg, inferred = copy.deepcopy(arch), [f"architecture from the preset ({arch.vision.width}-wide ViT, "
                                          f"{arch.text.num_hidden_layers} BERT layers)"]
    pos = sd.get("visual_encoder.pos_embed")
    if infer_image_size and pos is not None:
        side = math.isqrt(pos.shape[1] - 1)
        if side * side != pos.shape[1] - 1:
            raise CheckpointError(f"{path}: visual_encoder.pos_embed has {pos.shape[1] - 1} patches, not a square grid")
        cfg.vision.image_res = side * cfg.vision.patch_size
        inferred.append(f"image size {cfg.vision.image_res} px from its position table ({side} x {side} patches "
                        f"of {cfg.vision.patch_size})")
    return Recognised(str(path), official_task(sd, path), cfg, sd, ours=False, inferred=inferred)


def _layer_index(key: str) -> tuple[int, int] | None:
    """(position of the layer number among the dot-separated parts, the number) of a BERT layer key."""
    parts = key.split(".")
    if "layer" in parts:
        i = parts.index("layer") + 1
        if i < len(parts) and parts[i].isdigit():
            return i, int(parts[i])
    return None


def _with_layer(key: str, pos: int, n: int) -> str:
    parts = key.split(".")
    parts[pos] = str(n)
    return ".".join(parts)


def pretrained_to_task(state_dict: dict[str, Tensor], task: str, fusion_layer: int = 6) -> dict[str, Tensor]:
    """Map a pre-training state dict (`ALBEF.pth`, ours) to a task's keys, as the original scripts do.

    retrieval / grounding / ve / nlvr-from-text-assignment: `text_encoder.bert.*` -> `text_encoder.*` (the
    MLM head keys stay as they are, and are reported unused). vqa: additionally the answer decoder (and
    its momentum copy) is built from the fusion layers (renumbered from 0), the embeddings and the MLM head.
    pretrain_nlvr (and nlvr started straight from a pre-training file): every fusion layer f+i is copied
    into layers f+2i and f+2i+1 (one per image).
    """
    from albef_lab.models.registry import task_spec

    spec = task_spec(task)
    expand_fusion = spec.expand_fusion
    out: dict[str, Tensor] = {}
    for key, value in state_dict.items():
        is_text = key.startswith(("text_encoder.", "text_encoder_m."))
        new = key.replace(".bert.", ".", 1) if is_text else key
        if spec.decoder_from_fusion and is_text:
            dec = key.replace("text_encoder", "text_decoder", 1)
            loc = _layer_index(dec)
            if loc is None:
                out[dec] = value
            elif loc[1] >= fusion_layer:
                out[_with_layer(dec, loc[0], loc[1] - fusion_layer)] = value
            if ".cls." in key:  # moved to the decoder
                continue
        if expand_fusion and is_text and ".bert." in key:
            loc = _layer_index(new)
            if loc is not None and loc[1] >= fusion_layer:
                n = (loc[1] - fusion_layer) * 2 + fusion_layer
                out[_with_layer(new, loc[0], n)] = value
                out[_with_layer(new, loc[0], n + 1)] = value
                continue
        out[new] = value
    return out


def init_from_pretrained(model: nn.Module, task: str, state_dict: dict[str, Tensor], fusion_layer: int = 6,
                         fix_momentum_init: bool = False, verbose: bool = True) -> LoadReport:
    """Start a task model from a pre-trained checkpoint; keys the task does not use are reported, not loaded.

    Anything missing other than the task's new heads is an error. Momentum copies absent from the file
    (NLVR2 after text-assignment pre-training) stay as built, like the original, which copies the
    online weights into them BEFORE loading; `fix_momentum_init=True` copies the loaded weights instead.
    """
    mapped = pretrained_to_task(state_dict, task, fusion_layer)
    report = load_into(model, mapped, strict=False, verbose=False)
    from albef_lab.models.registry import task_spec

    allowed = task_spec(task).new_keys
    lacking = [k for k in report.missing if not k.startswith(allowed) and "_m." not in k]
    if lacking or report.mismatched:
        raise CheckpointError(f"pre-trained checkpoint cannot initialise the {task} model\n{report}")
    momentum_missing = [k for k in report.missing if "_m." in k and not k.startswith(allowed)]
    if momentum_missing and fix_momentum_init and hasattr(model, "copy_params"):
        model.copy_params()
    if verbose:
        print(report)
    return report


def load_for_task(model: nn.Module, task: str, state_dict: dict[str, Tensor], *, fusion_layer: int,
                  fix_momentum_init: bool = False, verbose: bool = False) -> LoadReport:
    """Load any file a task model can start from: one in the task's own layout (a fine-tuned file such as
    `mscoco.pth`, or ours) loads strictly; a pre-training file (`ALBEF.pth`, ours) is mapped as the
    original scripts do (`init_from_pretrained`)."""
    if set(model.state_dict()) <= set(state_dict):
        return load_into(model, state_dict, strict=True, verbose=verbose)
    return init_from_pretrained(model, task, state_dict, fusion_layer, fix_momentum_init=fix_momentum_init,
                                verbose=verbose)


def load_deit(vit: nn.Module, path: str | Path, verbose: bool = True) -> LoadReport:
    """Initialise a ViT from a DeiT/timm ImageNet checkpoint (e.g. deit_base_patch16_224): the classifier
    head (and a distillation token) are dropped, the position table is resized to the ViT's image size."""
    sd = state_dict_of(read_file(path), path)
    sd = {k: v for k, v in sd.items() if not k.startswith(("head", "dist_token", "fc_norm"))}
    if "pos_embed" in sd:
        extra = sd["pos_embed"].shape[1] - 1 - math.isqrt(sd["pos_embed"].shape[1] - 1) ** 2
        if extra:  # DeiT-distilled: [cls, dist] tokens; keep cls
            sd["pos_embed"] = torch.cat([sd["pos_embed"][:, :1], sd["pos_embed"][:, 1 + extra:]], dim=1)
    return load_into(vit, sd, strict=True, verbose=verbose)  # resizes the position table if needed


def load_bert(text_encoder: nn.Module, path: str | Path, verbose: bool = True) -> LoadReport:
    """Initialise the BERT text encoder (with or without MLM head) from a `bert-base-uncased` checkpoint
    file or folder (`model.safetensors` or `pytorch_model.bin`). Cross-attention starts random, as in
    the original; the pooler and the next-sentence head are not used."""
    path = Path(path)
    if path.is_dir():
        for name in ("model.safetensors", "pytorch_model.bin"):
            if (path / name).is_file():
                path = path / name
                break
        else:
            raise FileNotFoundError(f"{path}: no model.safetensors or pytorch_model.bin")
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        sd = load_file(str(path))
    else:
        sd = state_dict_of(read_file(path), path)
    # older files name LayerNorm parameters gamma/beta
    sd = {k.replace("LayerNorm.gamma", "LayerNorm.weight").replace("LayerNorm.beta", "LayerNorm.bias"): v
          for k, v in sd.items()}
    own = text_encoder.state_dict()
    has_bert_prefix = any(k.startswith("bert.") for k in own)
    mapped = {}
    for k, v in sd.items():
        if k.startswith(("bert.pooler", "cls.seq_relationship")):
            continue
        key = k if has_bert_prefix else k.removeprefix("bert.")
        if not has_bert_prefix and key.startswith("cls."):
            continue
        mapped[key] = v
    words = mapped.get("bert.embeddings.word_embeddings.weight")
    if has_bert_prefix and "cls.predictions.decoder.weight" not in mapped and words is not None:
        mapped["cls.predictions.decoder.weight"] = words
        mapped["cls.predictions.decoder.bias"] = mapped.get("cls.predictions.bias", own["cls.predictions.bias"])
    report = load_into(text_encoder, mapped, strict=False, verbose=False)
    lacking = [k for k in report.missing if ".crossattention." not in k and not k.endswith("position_ids")]
    if lacking or report.mismatched:
        raise CheckpointError(f"{path} does not fit the BERT text encoder\n{report}")
    if verbose:
        print(report)
    return report
