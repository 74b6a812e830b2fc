"""ONNX export of the three parts that rank images for a text: the image encoder, the text encoder (each with its
ITC projection) and the ITM fusion head, with dynamic batch and text length, checked against torch on export.

The files run under onnxruntime with no torch: `examples/onnx_gallery.py` ranks a folder of images with them.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import tempfile
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor, nn

from albef_lab.data.tokenizer import SPECIALS
from albef_lab.data.transforms import MEAN, STD
from albef_lab.files import write_text_atomic

OPSET = 18
MANIFEST = "albef_onnx.json"
TOLERANCE = 1e-4  # largest |onnxruntime - torch| over the largest |torch| of each output


class ImageEncoder(nn.Module):
    """image [B, 3, R, R] -> (image_states [B, 1 + patches, D], image_feat [B, E], normalised)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, image: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.encode_image(image)


class TextEncoder(nn.Module):
    """(input_ids, attention_mask) [B, L] -> (text_states [B, L, D], text_feat [B, E], normalised)."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, input_ids: Tensor, attention_mask: Tensor) -> tuple[Tensor, Tensor]:
        return self.model.encode_text(input_ids, attention_mask)


class MatchHead(nn.Module):
    """(text_states, attention_mask, image_states), row b with image b -> ITM logits [B, 2] {no match, match}."""

    def __init__(self, model: nn.Module):
        super().__init__()
        self.model = model

    def forward(self, text_states: Tensor, attention_mask: Tensor, image_states: Tensor) -> Tensor:
        return self.model.itm_logits(text_states, attention_mask, image_states)


@dataclass
class Part:
    """One exported file: the wrapper, its input and output names, and which input axes are dynamic."""

    file: str
    inputs: tuple[str, ...]
    outputs: tuple[str, ...]
    dynamic: dict[str, tuple[str, ...]]  # input name -> the names of its dynamic axes, from axis 0


PARTS = {
    "image": Part("image_encoder.onnx", ("image",), ("image_states", "image_feat"), {"image": ("batch",)}),
    "text": Part("text_encoder.onnx", ("input_ids", "attention_mask"), ("text_states", "text_feat"),
                 {"input_ids": ("batch", "length"), "attention_mask": ("batch", "length")}),
    "itm": Part("itm_head.onnx", ("text_states", "attention_mask", "image_states"), ("itm_logits",),
                {"text_states": ("batch", "length"), "attention_mask": ("batch", "length"),
                 "image_states": ("batch",)}),
}
WRAPPERS = {"image": ImageEncoder, "text": TextEncoder, "itm": MatchHead}


@dataclass
class Manifest:
    """What a runtime needs beside the files: the image size and normalisation, the token convention."""

    image_res: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    max_tokens: int
    cls_token_id: int
    pad_token_id: int
    embed_dim: int
    files: dict[str, str]
    source: str
    opset: int = OPSET


@dataclass
class Check:
    part: str
    output: str
    shape: tuple[int, ...]
    rel_error: float

    @property
    def ok(self) -> bool:
        return self.rel_error <= TOLERANCE


def sample_inputs(model: nn.Module, batch: int, length: int, seed: int = 0) -> dict[str, dict[str, Tensor]]:
    """Inputs for every part: random pixels, random in-vocabulary tokens after [CLS], the last row padded."""
    g = torch.Generator().manual_seed(seed)
    res = model.cfg.vision.image_res
    vocab = model.cfg.text.vocab_size
    image = torch.randn(batch, 3, res, res, generator=g)
    ids = torch.randint(104, vocab, (batch, length), generator=g)
    ids[:, 0] = SPECIALS["[CLS]"]
    mask = torch.ones_like(ids)
    if length > 2:
        mask[-1, length // 2:] = 0
        ids[-1, length // 2:] = 0
    with torch.no_grad():
        image_states = model.encode_image(image)[0]
        text_states = model.encode_text(ids, mask)[0]
    return {"image": {"image": image}, "text": {"input_ids": ids, "attention_mask": mask},
            "itm": {"text_states": text_states, "attention_mask": mask, "image_states": image_states}}


def _export_part(model: nn.Module, name: str, example: dict[str, Tensor], path: Path) -> None:
    part = PARTS[name]
    dims = {axis: torch.export.Dim(axis, min=1 if axis == "batch" else 2, max=None if axis == "batch" else 512)
            for axis in ("batch", "length")}
    shapes = {k: {i: dims[a] for i, a in enumerate(axes)} for k, axes in part.dynamic.items()}
    wrapper = WRAPPERS[name](model).eval()
    with warnings.catch_warnings(), torch.no_grad(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")  # the exporter's notes on renamed dynamic axes, and its step-by-step prints
        program = torch.onnx.export(wrapper, tuple(example[k] for k in part.inputs), dynamo=True, opset_version=OPSET,
                                    input_names=list(part.inputs), output_names=list(part.outputs),
                                    dynamic_shapes=tuple(shapes.get(k) for k in part.inputs), verbose=False,
                                    external_data=False)
    program.save(str(path))


def check_onnx(model: nn.Module, out_dir: str | Path, sizes: tuple[tuple[int, int], ...] = ((1, 2), (3, 11)),
               seed: int = 1) -> list[Check]:
    """Every output of every file under onnxruntime against torch, at batch x length `sizes` (not the export's)."""
    import onnxruntime as ort

    out_dir = Path(out_dir)
    checks = []
    for name, part in PARTS.items():
        runner = ort.InferenceSession(str(out_dir / part.file), providers=["CPUExecutionProvider"])
        wrapper = WRAPPERS[name](model).eval()
        for batch, length in sizes:
            inputs = sample_inputs(model, batch, length, seed)[name]
            with torch.no_grad():
                want = wrapper(*(inputs[k] for k in part.inputs))
            got = runner.run(list(part.outputs), {k: v.numpy() for k, v in inputs.items()})
            want = want if isinstance(want, tuple) else (want,)
            for out, w, o in zip(part.outputs, want, got, strict=True):
                rel = float(np.abs(o - w.numpy()).max() / max(float(w.abs().max()), 1e-12))
                checks.append(Check(name, out, tuple(o.shape), rel))
    return checks


def export_onnx(model: nn.Module, out_dir: str | Path, *, vocab: str | Path | None = None, max_tokens: int = 30,
                source: str = "") -> tuple[Manifest, list[Check]]:
    """Write the three files, `albef_onnx.json` (and vocab.txt when given) into `out_dir`; raise ValueError if an
    output of onnxruntime is off torch's by more than TOLERANCE. The files appear only after the check passed."""
    model = model.float().eval()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    example = sample_inputs(model, 2, 7)
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out_dir) as tmp:
        tmp = Path(tmp)
        for name, part in PARTS.items():
            _export_part(model, name, example[name], tmp / part.file)
        checks = check_onnx(model, tmp)
        bad = [c for c in checks if not c.ok]
        if bad:
            raise ValueError("onnxruntime disagrees with torch: " + "; ".join(
                f"{c.part}.{c.output} {list(c.shape)}: relative error {c.rel_error:.2e} > {TOLERANCE:.0e}"
                for c in bad))
        for part in PARTS.values():
            (tmp / part.file).replace(out_dir / part.file)
    if vocab is not None:
        shutil.copyfile(Path(vocab) / "vocab.txt" if Path(vocab).is_dir() else vocab, out_dir / "vocab.txt")
    manifest = Manifest(model.cfg.vision.image_res, MEAN, STD, max_tokens, SPECIALS["[CLS]"], SPECIALS["[PAD]"],
                        model.cfg.embed_dim,
                        {name: part.file for name, part in PARTS.items()}, source)
    write_text_atomic(out_dir / MANIFEST, json.dumps(asdict(manifest), indent=2) + "\n")
    return manifest, checks


def format_checks(checks: list[Check]) -> str:
    worst: dict[tuple[str, str], Check] = {}
    for c in checks:
        if (c.part, c.output) not in worst or c.rel_error > worst[c.part, c.output].rel_error:
            worst[c.part, c.output] = c
    return "\n".join(f"  {'ok ' if c.ok else 'BAD'} {c.part:<6} {c.output:<13} largest relative error "
                     f"{c.rel_error:.1e}" for c in worst.values())
