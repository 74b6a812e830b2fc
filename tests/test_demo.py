import re
import shutil
import threading
import time

import pytest
from PIL import Image

from albef_lab.demo import (
    VQA_MINUTES,
    DemoBuild,
    DemoPaths,
    finetune_demo_vqa,
    pretrain_demo_model,
    vqa_stage_config,
)
from albef_lab.inference import InputError
from albef_lab.train.engine import train
from tests.helpers import SMALL


def test_the_demo_vqa_stage_makes_its_steps_and_warns_of_no_clock(tmp_path, capsys, demo_files):
    """The demo's VQA fine-tune is a step count with the minutes as a cap: it ends at its last step, saved, and
    prints no clock warning (it once ran "until the clock", asking 7400 steps, and warned on every machine)."""
    world, pre, _ = demo_files
    paths = DemoPaths(tmp_path / "runs", world)
    cfg = vqa_stage_config(paths, progress=False, steps=3, extra=[*SMALL, "model.decoder_layers=1", "data.k_test=4"])
    assert cfg.train.max_minutes == VQA_MINUTES and cfg.train.max_steps == 3
    capsys.readouterr()
    result = train(cfg, "vqa", init=str(pre))
    assert result["step"] == 3 and "clock_cuts" not in result, result
    assert "vqa_acc" in result and paths.vqa.is_file()
    assert "warning: the clock" not in capsys.readouterr().out


BUILD_EXTRA = [*SMALL, "model.decoder_layers=1", "model.text.num_hidden_layers=3", "data.k_test=4",
               "train.max_steps=2"]  # the demo_files models' shape, two steps per stage


def gated(step, gate: threading.Event):
    """A build step that waits for `gate` first: the test holds the build at a stage."""
    def run(*args):
        assert gate.wait(120), "the test never opened the gate"
        step(*args)
    return run


def wait_for(cond, seconds: float = 120):
    deadline = time.monotonic() + seconds
    while not cond():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def demo_copy(tmp_path, world) -> DemoPaths:
    data = tmp_path / "world"
    shutil.copytree(world, data)
    return DemoPaths(tmp_path / "runs", data)


def test_the_build_serves_each_model_as_soon_as_it_is_ready(tmp_path, demo_files):
    paths = demo_copy(tmp_path, demo_files[0])
    gates = threading.Event(), threading.Event()
    build = DemoBuild(paths, extra=BUILD_EXTRA, steps=(gated(pretrain_demo_model, gates[0]),
                                                       gated(finetune_demo_vqa, gates[1]))).start()
    with pytest.raises(InputError, match=r"still being built: pre-training .*min"):
        build.workbench("matcher")
    with pytest.raises(InputError, match="still being built: pre-training"):
        build.workbench("vqa")  # nothing before the pre-training
    assert "⏳ **pre-training" in build.status_markdown() and "… **VQA" in build.status_markdown()
    gates[0].set()
    wait_for(lambda: build.wb is not None)
    rows, _ = build.workbench("matcher").search("a red circle", k=3)
    assert len(rows) == 3 and "✅ **pre-training" in build.status_markdown()
    with pytest.raises(InputError, match=r"still being built: VQA fine-tuning .*step \d+ of"):
        build.workbench("vqa")
    gates[1].set()
    wait_for(lambda: build.done)
    answers, _ = build.workbench("vqa").answer(Image.open(build.wb.gallery.paths[0]), "how many shapes are there")
    assert len(answers) == 5 and build.status_markdown().startswith("The models are ready.")
    assert paths.pretrain.is_file() and paths.vqa.is_file()
    again = DemoBuild(paths, extra=BUILD_EXTRA).start()  # a later start: the models are there, loaded in seconds
    wait_for(lambda: again.done, 60)
    assert again.error is None and again.wb.vqa is not None


def test_a_failed_build_says_where_on_the_page_and_to_every_request(tmp_path, demo_files):
    paths = demo_copy(tmp_path, demo_files[0])

    def broken(*args):
        raise RuntimeError("out of disk")

    build = DemoBuild(paths, extra=BUILD_EXTRA, steps=(broken, finetune_demo_vqa)).start()
    wait_for(lambda: build.done)
    assert "failed in pre-training" in build.status_markdown() and "out of disk" in build.status_markdown()
    with pytest.raises(InputError, match="build failed in pre-training .*out of disk"):
        build.workbench("matcher")


def test_a_stopped_build_resumes_from_its_last_checkpoint(tmp_path, demo_files, capsys):
    paths = demo_copy(tmp_path, demo_files[0])
    extra = [*BUILD_EXTRA, "train.max_steps=4", "train.save_every=2"]
    pretrain_demo_model(paths, progress=False, extra=extra)
    run = paths.pretrain.parent
    assert (run / "checkpoint_0000002.pth").is_file()
    paths.pretrain.unlink()  # as if the process had been stopped after its step-2 checkpoint
    for late in run.glob("checkpoint_000000[3-9].pth"):
        late.unlink()
    capsys.readouterr()
    pretrain_demo_model(paths, progress=False, extra=extra)
    assert re.search(r"resumed from \S+checkpoint_0000002.pth at step 2", capsys.readouterr().out)
    assert paths.pretrain.is_file()


def test_a_half_written_last_metrics_line_is_left_out_while_a_run_writes(tmp_path):
    import json

    from albef_lab.demo import last_step
    from albef_lab.inference import last_evaluation
    from albef_lab.train.plot import read_metrics

    metrics = tmp_path / "metrics.jsonl"
    rows = [{"step": 5, "loss": 1.0}, {"step": 5, "val_vqa_acc": 40.0}, {"step": 10, "loss": 0.5}]
    metrics.write_text("\n".join(json.dumps(r) for r in rows) + '\n{"step": 15, "lo')
    assert last_step(metrics) == 10 and last_evaluation(metrics) == {"vqa_acc": 40.0}
    assert last_step(tmp_path / "none.jsonl") == 0 and last_evaluation(tmp_path / "none.jsonl") == {}
    with pytest.raises(ValueError):
        read_metrics(metrics)  # a finished run's file must parse whole
