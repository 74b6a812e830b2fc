"""Training engine: exact resume, safe checkpoints, schedules, sampling, torchrun with 2 processes."""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from albef_lab.config import preset
from albef_lab.models.factory import create_model
from albef_lab.train import engine as E
from albef_lab.train.data import ResumableSampler
from albef_lab.train.schedule import alpha_at, lr_at, param_groups
from tests.helpers import SMALL, small_cfg

ROOT = Path(__file__).resolve().parents[1]

def losses(run: Path) -> dict[int, float]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["loss"] for r in rows if "loss" in r}


def test_a_fresh_run_in_a_used_folder_starts_a_fresh_log(world, tmp_path):
    """Without --resume, a run into a folder that holds an earlier run's log replaces it rather than appending."""
    out = tmp_path / "run"
    E.train(small_cfg(world, out, "train.max_steps=3", "train.eval_every=100", "train.save_every=100"))
    first = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    E.train(small_cfg(world, out, "train.max_steps=3", "train.eval_every=100", "train.save_every=100"))
    second = [json.loads(x) for x in (out / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in second] == [r["step"] for r in first] == sorted(r["step"] for r in first)
    assert [sorted(r) for r in second] == [sorted(r) for r in first]  # one run's rows, not two runs' appended


def test_interrupted_and_resumed_equals_uninterrupted(world, tmp_path, monkeypatch):
    full = tmp_path / "full"
    E.pretrain(small_cfg(world, full, "train.max_steps=7", "train.save_every=3"))
    ref = torch.load(full / "model.pth", weights_only=True)["model"]

    part = tmp_path / "part"
    real_save = E.Trainer.save

    def save_then_die(self, best=False):
        path = real_save(self, best)
        if self.state.step == 3:
            raise KeyboardInterrupt("simulated crash after the checkpoint of step 3")
        return path

    monkeypatch.setattr(E.Trainer, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        E.pretrain(small_cfg(world, part, "train.max_steps=7", "train.save_every=3"))
    monkeypatch.undo()
    assert E.latest_checkpoint(part).name == "checkpoint_0000003.pth"
    trainer = E.Trainer(small_cfg(world, part, "train.max_steps=7", "train.save_every=3"), resume="auto")
    assert trainer.state.step == 3  # the checkpoint was loaded, not a fresh start
    trainer.run()
    got = torch.load(part / "model.pth", weights_only=True)["model"]
    rows = [json.loads(x) for x in (part / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == list(range(1, 8))  # 1-3 before the crash, 4-7 after
    assert losses(full) == losses(part)
    for k, v in ref.items():
        assert torch.equal(v, got[k]), k  # weights, momentum weights, queues, pointer: bit-exact


def test_resuming_with_another_model_config_is_refused(world, tmp_path):
    """A checkpoint's weights and optimiser belong to its model config: another one is an error, not a guess."""
    out = tmp_path / "run"
    E.pretrain(small_cfg(world, out, "train.max_steps=2", "train.save_every=2"))
    with pytest.raises(ValueError, match="another model config"):
        E.Trainer(small_cfg(world, out, "train.max_steps=4", "model.momentum=0.9"), resume="auto")
    with pytest.raises(ValueError, match="another model config"):
        E.Trainer(small_cfg(world, out, "train.max_steps=4", "model.fix_mlm_nan=true"), resume="auto")
    assert E.Trainer(small_cfg(world, out, "train.max_steps=4"), resume="auto").state.step == 2  # same: resumes


def test_a_save_killed_half_way_leaves_the_previous_checkpoint(world, tmp_path, monkeypatch):
    run = tmp_path / "r"
    calls = {"n": 0}
    real = torch.save

    def flaky(obj, f, *a, **k):
        calls["n"] += 1
        if calls["n"] == 2:
            f.write(b"partial bytes")
            raise KeyboardInterrupt("killed while saving")
        return real(obj, f, *a, **k)

    monkeypatch.setattr(torch, "save", flaky)
    with pytest.raises(KeyboardInterrupt):
        E.pretrain(small_cfg(world, run, "train.max_steps=4", "train.save_every=2"))
    monkeypatch.undo()
    files = sorted(p.name for p in run.iterdir() if p.suffix in (".pth", ".tmp"))
    assert files == ["checkpoint_0000002.pth"]
    ckpt = torch.load(run / "checkpoint_0000002.pth", weights_only=False)
    assert ckpt["state"]["step"] == 2
    trainer = E.Trainer(small_cfg(world, run, "train.max_steps=4", "train.save_every=2"), resume="auto")
    assert trainer.state.step == 2  # continues from the surviving checkpoint
    assert trainer.run()["step"] == 4
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "loss" in r] == [1, 2, 3, 4]


def test_keep_last_and_best(world, tmp_path):
    run = tmp_path / "k"
    E.pretrain(small_cfg(world, run, "train.max_steps=6", "train.save_every=1", "train.eval_every=2",
                         "train.keep_last=2"))
    names = sorted(p.name for p in run.glob("*.pth"))
    assert names == ["best.pth", "checkpoint_0000005.pth", "checkpoint_0000006.pth", "model.pth"]
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if "val_img_r1" in r] == [2, 4, 6]


def test_schedule_and_alpha_ramp():
    assert lr_at(0, 100, 1e-4, 1e-5, 10, 1e-6) == pytest.approx(1e-6)
    assert lr_at(5, 100, 1e-4, 1e-5, 10, 1e-6) == pytest.approx((1e-6 + 1e-4) / 2)
    assert lr_at(10, 100, 1e-4, 1e-5, 10, 1e-6) == pytest.approx(1e-4)
    assert lr_at(55, 100, 1e-4, 1e-5, 10, 1e-6) == pytest.approx((1e-4 + 1e-5) / 2)
    assert lr_at(100, 100, 1e-4, 1e-5, 10, 1e-6) == pytest.approx(1e-5)
    assert alpha_at(0, 50, 0.4) == 0 and alpha_at(25, 50, 0.4) == pytest.approx(0.2)
    assert alpha_at(50, 50, 0.4) == alpha_at(500, 50, 0.4) == pytest.approx(0.4)


def test_weight_decay_groups_match_the_reference(reference):
    model = create_model("pretrain", preset("base").model, device="meta")
    decay, no_decay = param_groups(model, 0.02)
    ids = {id(p): n for n, p in model.named_parameters()}
    ours = {ids[id(p)]: "yes" for p in decay["params"]} | {ids[id(p)]: "no" for p in no_decay["params"]}
    rows = [ln.split("\t") for ln in (reference / "keys" / "model_pretrain.annot.tsv").read_text().splitlines()[1:]]
    expected = {r[0]: r[5] for r in rows if r[5] in ("yes", "no") and not r[4]}
    assert ours == expected
    assert ours["temp"] == "yes" and ours["visual_encoder.pos_embed"] == "yes"


def test_vision_lr_scale_sets_the_image_encoders_share_of_the_lr(world, tmp_path):
    """A plugin's `lr_scales` (the recipe's `shapesworld.vision_lr_scale`): the image encoder's groups step at that
    share of the lr (0: it stays as it was, while the rest trains); none keeps the original's two groups."""
    model = create_model("pretrain", small_cfg(world, tmp_path).model)
    assert [g.get("lr_scale") for g in param_groups(model, 0.02)] == [1.0, 1.0]
    groups = param_groups(model, 0.02, {"visual_encoder.": 0.1})
    vit = {id(p) for p in model.visual_encoder.parameters()}
    assert [g["lr_scale"] for g in groups] == [1.0, 1.0, 0.1, 0.1]
    assert all((id(p) in vit) == (g["lr_scale"] == 0.1) for g in groups for p in g["params"])
    runs = {}
    for scale in (0, 1):
        out = tmp_path / f"scale{scale}"
        E.train(small_cfg(world, out, "train.max_steps=3", "train.eval_every=100", "train.save_every=100",
                          "train.warmup_steps=0", f"shapesworld.vision_lr_scale={scale}"))
        runs[scale] = torch.load(out / "model.pth", map_location="cpu", weights_only=False)["model"]
    torch.manual_seed(small_cfg(world, tmp_path).train.seed)  # as the engine seeds before it builds the model
    init = create_model("pretrain", small_cfg(world, tmp_path).model).state_dict()
    vit_key, text_key = "visual_encoder.blocks.0.attn.qkv.weight", "text_encoder.bert.embeddings.word_embeddings.weight"
    assert torch.equal(runs[0][vit_key], init[vit_key]) and not torch.equal(runs[0][text_key], init[text_key])
    assert not torch.equal(runs[1][vit_key], init[vit_key])


def test_sampler_shares_are_disjoint_and_resume_mid_epoch():
    a = ResumableSampler(10, num_replicas=2, rank=0, seed=1)
    b = ResumableSampler(10, num_replicas=2, rank=1, seed=1)
    a.set_epoch(3)
    b.set_epoch(3)
    ia, ib = list(a), list(b)
    assert len(ia) == len(ib) == 5 and sorted(ia + ib) == list(range(10))
    a.set_epoch(3, start=2)
    assert list(a) == ia[2:] and len(a) == 3
    a.set_epoch(4)
    assert list(a) != ia


def test_plot_writes_a_png(world, tmp_path):
    from albef_lab.train.plot import plot_metrics
    run = tmp_path / "p"
    E.pretrain(small_cfg(world, run, "train.max_steps=2"))
    png = plot_metrics(run)
    assert png.read_bytes()[:4] == b"\x89PNG"


def test_queue_size_must_fit_the_global_batch(world, tmp_path):
    with pytest.raises(ValueError, match="multiple of the global batch"):
        E.Trainer(small_cfg(world, tmp_path / "q", "model.queue_size=20"))


@pytest.mark.slow
def test_two_process_gloo_run_keeps_ranks_identical(world, tmp_path):
    out = tmp_path / "ddp"
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "dist_worker.py"), str(world), str(out), *SMALL]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    r0, r1 = (torch.load(out / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    for k, v in r0["state"].items():
        assert torch.equal(v, r1["state"][k]), k  # weights, momentum weights and queues identical
    b, ptr = r0["feat_m"].shape[0], r0["ptr_before"]
    assert r0["ptr_after"] == (ptr + 2 * b) % r0["state"]["image_queue"].shape[1]
    cols = r0["state"]["image_queue"][:, ptr:ptr + 2 * b].T
    assert torch.allclose(cols, torch.cat([r0["feat_m"], r1["feat_m"]]))  # rank order
    assert not torch.allclose(r0["feat_m"], r1["feat_m"])
    assert r0["steps"] == 3
