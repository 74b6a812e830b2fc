"""The public model API (encode_image, encode_text, fusion, itm_logits), the recorder and eval_mode."""

import pytest
import torch
import torch.nn.functional as F

from albef_lab.models.albef import ALBEF
from albef_lab.models.base import eval_mode
from albef_lab.models.record import record, recording
from albef_lab.models.tasks import ALBEFRetrieval
from tests.helpers import batch, small_config


@pytest.mark.parametrize("cls", [ALBEF, ALBEFRetrieval])
def test_encoders_return_states_and_unit_features(cls):
    torch.manual_seed(0)
    model = cls(small_config()).eval()
    image, ids, mask = batch()
    states, feat = model.encode_image(image)
    assert states.shape == (4, 5, 32) and feat.shape == (4, 8)
    assert torch.allclose(feat.norm(dim=-1), torch.ones(4))
    assert torch.allclose(feat, F.normalize(model.vision_proj(model.visual_encoder(image)[:, 0]), dim=-1))
    t_states, t_feat = model.encode_text(ids, mask)
    assert t_states.shape == (4, ids.shape[1], 32) and torch.allclose(t_feat.norm(dim=-1), torch.ones(4))
    _, feat_m = model.encode_image(image, momentum=True)
    with torch.no_grad():
        model.vision_proj_m.weight.add_(1.0)
    assert not torch.allclose(model.encode_image(image, momentum=True)[1], feat_m)  # the momentum copy is used


def test_itm_logits_is_the_head_on_the_fused_cls_and_depends_on_the_image():
    torch.manual_seed(0)
    model = ALBEF(small_config()).eval()
    image, ids, mask = batch()
    img, _ = model.encode_image(image)
    txt, _ = model.encode_text(ids, mask)
    logits = model.itm_logits(txt, mask, img)
    full = model.text_encoder.bert(ids, mask, encoder_hidden_states=img)  # multimodal mode: all layers at once
    assert logits.shape == (4, 2)
    assert torch.allclose(logits, model.itm_head(full[:, 0]), atol=1e-6)
    assert not torch.allclose(logits, model.itm_logits(txt, mask, img.flip(0)))


def test_recorder_collects_only_inside_its_block_and_nests():
    record(x=1)  # no block: ignored
    with recording() as outer:
        record(a=1)
        with recording() as inner:
            record(b=2)
        record(c=3)
    record(d=4)
    assert outer == {"a": 1, "c": 3} and inner == {"b": 2}


def test_the_model_records_nothing_without_a_recorder():
    torch.manual_seed(0)
    model = ALBEF(small_config())
    image, ids, mask = batch()
    with recording() as rec:
        model(image, ids, mask, 0.4, generator=torch.Generator().manual_seed(0))
    assert {"image_feat_m", "vl_output", "mlm_logits"} <= set(rec)
    import albef_lab.models.record as R
    assert R._active == []  # the block closed


def test_eval_mode_restores_the_mode_even_after_an_error():
    model = ALBEF(small_config()).train()
    with pytest.raises(RuntimeError):
        with eval_mode(model):
            assert not model.training and not model.visual_encoder.training
            raise RuntimeError("boom")
    assert model.training and model.visual_encoder.training
    model.eval()
    with eval_mode(model):
        pass
    assert not model.training


def test_no_package_imports_one_above_it():
    """models/objectives/data/distributed/config never import train/eval/viz/cli; viz imports only models."""
    import ast
    from pathlib import Path

    root = Path(__file__).resolve().parents[1] / "albef_lab"
    above = {"models": ("train", "eval", "viz", "cli", "reference"), "objectives": ("models", "train", "eval", "viz",
             "cli"), "data": ("models", "train", "eval", "viz", "cli"), "viz": ("train", "eval", "cli"),
             "eval": ("train", "cli")}
    bad = []
    for path in root.rglob("*.py"):
        rel = path.relative_to(root).parts
        forbidden = above.get(rel[0], ()) if len(rel) > 1 else ()
        if path.name in ("distributed.py", "config.py") and len(rel) == 1:
            forbidden = ("models", "train", "eval", "viz", "cli", "data")
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("albef_lab."):
                if node.module.split(".")[1] in forbidden:
                    bad.append(f"{'/'.join(rel)} imports {node.module}")
    assert not bad, bad


def test_the_readme_python_snippet_runs(tmp_path):
    """The README's "Use from Python" block, on a model and a world the test makes."""
    import re
    from pathlib import Path

    from albef_lab.train.engine import pretrain
    from tests.helpers import make_world, small_cfg

    world = make_world(tmp_path / "w", images=20, seed=1)
    pretrain(small_cfg(world, tmp_path / "run", "train.max_steps=1"))
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"## Use from Python.*?```python\n(.*?)```", readme, re.S).group(1)
    code = code.replace("runs/pretrain_tiny/model.pth", str(tmp_path / "run" / "model.pth"))
    code = code.replace("data/shapesworld/vocab", str(world / "vocab"))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert 0.0 <= float(scope["match"]) <= 1.0 and scope["similarity"].shape == (1, 1)
    assert scope["heat"].shape == (1, 2, 2) and scope["heat"].sum() >= 0


def test_the_readme_workbench_snippet_runs(tmp_path, demo_files):
    import re
    from pathlib import Path

    world, pre, vqa = demo_files
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    code = re.search(r"The app's own layer.*?```python\n(.*?)```", readme, re.S).group(1)
    image = sorted((world / "images").glob("*.png"))[0]
    for old, new in (("runs/demo/pretrain/model.pth", pre), ("runs/demo/vqa/model.pth", vqa),
                     ('data="data/shapesworld"', f'data="{world}", runs="{tmp_path / "runs"}", progress=False'),
                     ("data/shapesworld/images/000054.png", image)):
        code = code.replace(old, str(new))
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    assert len(scope["answers"]) == 5 and scope["hits"] and scope["cam"]["sentence"].ndim == 2
    assert scope["region"] is None or len(scope["region"]) == 4
