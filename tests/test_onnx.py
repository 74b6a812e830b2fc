"""ONNX export: the three files equal torch under onnxruntime at sizes the export never saw, a wrong file is caught
before anything is written, and the example ranks a gallery like the workbench with torch unimportable."""

import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from albef_lab.cli import main
from albef_lab.demo import build_workbench
from albef_lab.inference import folder_images, load_checkpoint
from albef_lab.onnx_export import MANIFEST, PARTS, TOLERANCE, check_onnx, export_onnx, sample_inputs
from tests.conftest import ROOT
from tests.helpers import load_module

ort = pytest.importorskip("onnxruntime")
EXAMPLE = ROOT / "examples" / "onnx_gallery.py"


@pytest.fixture(scope="module")
def exported(tmp_path_factory, demo_files):
    world, pre, _ = demo_files
    out = tmp_path_factory.mktemp("onnx") / "export"
    assert main(["export", "onnx", str(pre), str(out), "--tokenizer", str(world / "vocab")]) == 0
    return out, load_checkpoint(pre).model, world


def rel_error(got: np.ndarray, want: torch.Tensor) -> float:
    return float(np.abs(got - want.numpy()).max() / want.abs().max())


def test_every_part_equals_torch_at_new_batch_and_length(exported):
    out, model, _ = exported
    manifest = json.loads((out / MANIFEST).read_text())
    assert manifest["image_res"] == model.cfg.vision.image_res and (out / "vocab.txt").is_file()
    for (batch, length), seed in (((5, 17), 3), ((1, 30), 4)):
        inputs = sample_inputs(model, batch, length, seed)
        for name, part in PARTS.items():
            runner = ort.InferenceSession(str(out / manifest["files"][name]), providers=["CPUExecutionProvider"])
            got = runner.run(None, {k: v.numpy() for k, v in inputs[name].items()})
            want = the_model(model, name, inputs[name])
            assert [g.shape for g in got] == [tuple(w.shape) for w in want]
            for out_name, g, w in zip(part.outputs, got, want, strict=True):
                assert rel_error(g, w) <= TOLERANCE, f"{name}.{out_name} at {batch} x {length}"


def the_model(model, name: str, x: dict) -> tuple[torch.Tensor, ...]:
    """What the workbench computes, through the model's own API (not the export's wrappers)."""
    with torch.no_grad():
        if name == "image":
            return model.encode_image(x["image"])
        if name == "text":
            return model.encode_text(x["input_ids"], x["attention_mask"])
        return (model.itm_logits(x["text_states"], x["attention_mask"], x["image_states"]),)


def test_a_file_that_disagrees_is_refused_and_nothing_is_written(exported, tmp_path, monkeypatch):
    out, model, _ = exported
    wrong = [c for c in check_onnx(perturbed(model), out) if not c.ok]
    assert {c.part for c in wrong} == {"image", "text", "itm"}  # every part reads the changed weights

    import albef_lab.onnx_export as ox

    real = ox._export_part
    monkeypatch.setattr(ox, "_export_part", lambda m, *a: real(perturbed(m), *a))
    with pytest.raises(ValueError, match="onnxruntime disagrees with torch"):
        export_onnx(model, tmp_path / "bad")
    assert not list((tmp_path / "bad").rglob("*.onnx")) and not (tmp_path / "bad" / MANIFEST).exists()


def perturbed(model):
    """A copy whose projections, embeddings and ITM head are off by a little: what a wrong export would hold."""
    import copy

    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in (m.vision_proj.weight, m.text_proj.weight, m.itm_head.weight,
                  m.visual_encoder.patch_embed.proj.weight, m.bert.embeddings.word_embeddings.weight):
            p.add_(0.05 * torch.randn_like(p))
    return m


def test_the_example_tokenizes_like_the_workbench(exported, demo_files):
    out, _, world = exported
    wb = build_workbench([str(demo_files[1])], runs=str(out.parent / "runs"), data=str(world), progress=False)
    ranker = load_module(EXAMPLE).Ranker(out)
    for text in ["a red circle", "Two  BLUE squares, left of a triangle!", "a blorptastic star " * 8]:
        ids, mask = ranker.tokens(text)
        assert ids[0].tolist() == wb.text(text).ids[0].tolist() and mask.all()


def test_the_example_ranks_a_gallery_like_the_workbench_without_torch(exported, demo_files, tmp_path):
    out, _, world = exported
    wb = build_workbench([str(demo_files[1])], runs=str(out.parent / "runs"), data=str(world), progress=False)
    folder = tmp_path / "gallery"
    folder.mkdir()
    for p in wb.gallery.paths[:16]:  # photos come in other sizes than the model's: the resize is part of the test
        Image.open(p).resize((53, 41), Image.NEAREST).save(folder / p.name)
    wb.index_gallery(folder_images(folder), progress=False)
    query = "a red circle"
    blocked = ("import runpy, sys; sys.modules['torch'] = None; sys.argv = sys.argv[1:]; "
               "runpy.run_path(sys.argv[0], run_name='__main__')")
    res = subprocess.run([sys.executable, "-c", blocked, str(EXAMPLE), str(out), str(folder), query, "--k", "6"],
                         capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    rows = [line.split() for line in res.stdout.splitlines()]
    want, _ = wb.search(query, k=6)
    assert [r[2] for r in rows] == [w["path"] for w in want]
    np.testing.assert_allclose([float(r[0]) for r in rows], [w["itm"] for w in want], atol=2e-3)  # 3 decimals
    np.testing.assert_allclose([float(r[1]) for r in rows], [w["itc"] for w in want], atol=2e-3)


def test_the_readme_onnx_commands_run(demo_files, tmp_path):
    """The README's two lines, on the test's model and world: the export, then a ranked folder."""
    world, pre, _ = demo_files
    readme = (ROOT / "README.md").read_text()
    block = readme.split("## Without torch: ONNX", 1)[1].split("```bash\n", 1)[1].split("```", 1)[0]
    lines = [ln.replace("runs/pretrain_tiny/model.pth", str(pre)).replace("data/shapesworld", str(world))
             .replace("examples/", f"{ROOT}/examples/").replace("python ", f"{sys.executable} ", 1)
             for ln in block.strip().splitlines()]
    assert len(lines) == 2 and lines[0].startswith("albef-lab export onnx")
    albef = [sys.executable, "-m", "albef_lab", *lines[0].split()[1:]]
    assert subprocess.run(albef, cwd=tmp_path, capture_output=True, text=True, timeout=300).returncode == 0
    res = subprocess.run(lines[1], shell=True, cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    rows = res.stdout.splitlines()
    match = [float(r.split()[0]) for r in rows]
    assert len(rows) == 5 and match == sorted(match, reverse=True)
