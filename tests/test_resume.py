"""`albef-lab pretrain --resume auto` at the command line, after the process was killed (SIGKILL) mid-run.

Each case kills a run at a chosen moment, starts the same command again with `--resume auto`, and asks the
log where it continued and the final weights to equal an uninterrupted run's, bit for bit. One thread per run:
runs are deterministic for a given thread count.
"""

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch

from tests.helpers import SMALL

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
RESUMED = re.compile(r"resumed from (\S+) at step (\d+)")
# the tiny recipe's two stages around pre-training, shrunk: a vision warm-up and the last ITM step
STAGES = ["model.vision.conv_stem=true", "shapesworld.warmup_steps=150", "shapesworld.itm_finish_steps=200",
          "shapesworld.itm_finish_mined=2"]


def command(world: Path, out: Path, *extra: str) -> list[str]:
    return [sys.executable, "-m", "albef_lab", "pretrain", *SMALL, f"data.root={world}", f"train.output_dir={out}",
            "train.threads=1", "train.epochs=3", "train.max_steps=0", "train.progress=true", *extra]


def run(cmd: list[str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env())
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    return proc.stdout + proc.stderr


def env() -> dict:
    return {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def kill_when(cmd: list[str], ready) -> str:
    """Start `cmd`, SIGKILL it as soon as `ready(output so far)` holds; returns the output it wrote."""
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, env=env())
    seen: list[str] = []
    reader = threading.Thread(target=lambda: seen.extend(iter(lambda: proc.stdout.read1(256).decode(), "")))
    reader.start()
    deadline = time.monotonic() + 300
    try:
        while not ready("".join(seen)):
            assert proc.poll() is None, "the run ended before the moment to kill it:\n" + "".join(seen)[-2000:]
            assert time.monotonic() < deadline, "the moment to kill never came:\n" + "".join(seen)[-2000:]
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
        reader.join(30)
    assert proc.returncode == -signal.SIGKILL
    return "".join(seen)


def weights(run_dir: Path) -> dict:
    return torch.load(run_dir / "model.pth", weights_only=True)["model"]


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys()
    for k, v in wa.items():
        assert torch.equal(v, wb[k]), k


def checkpoint_exists(out: Path, name: str):
    return lambda _: (out / name).is_file()


def resume_and_check(cmd: list[str], out: Path, baseline: Path) -> int:
    """Run the same command with --resume auto; returns the step it said it resumed from."""
    log = run([*cmd, "--resume", "auto"])
    match = RESUMED.search(log)
    assert match, log[-2000:]
    assert_same_weights(out, baseline)
    steps = [int(s) for s in re.findall(r'"step": (\d+), "epoch": \d+, "loss"', (out / "metrics.jsonl").read_text())]
    assert steps == sorted(set(steps)), "a step was logged twice"
    return int(match.group(2))


@pytest.fixture(scope="module")
def baseline(world, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("uninterrupted")
    run(command(world, out, "train.save_every=2"))
    return out


def test_killed_after_a_step_checkpoint_resumes_from_it(world, baseline, tmp_path):
    out = tmp_path / "run"
    kill_when(command(world, out, "train.save_every=2"), checkpoint_exists(out, "checkpoint_0000002.pth"))
    assert not (out / "model.pth").exists()
    step = resume_and_check(command(world, out, "train.save_every=2"), out, baseline)
    total = len([r for r in (baseline / "metrics.jsonl").read_text().splitlines() if '"loss"' in r])
    assert 2 <= step < total and step % 2 == 0


def test_a_killed_run_on_shards_resumes_at_its_sample(world, baseline, tmp_path):
    """The same pairs as tar shards: the position in the checkpoint is a sample index, so the resumed run ends
    with the uninterrupted run's weights (which read the JSON and files, read identically)."""
    from albef_lab.data.shards import export_shards

    pattern, _ = export_shards(world / "pretrain.json", world, tmp_path / "shards", per_shard=9, progress=False)
    out = tmp_path / "run"
    cmd = command(world, out, "train.save_every=2", f"data.shards={pattern}")
    kill_when(cmd, checkpoint_exists(out, "checkpoint_0000002.pth"))
    assert resume_and_check(cmd, out, baseline) >= 2


def test_killed_after_an_end_of_epoch_checkpoint_resumes_at_the_next_epoch(world, baseline, tmp_path):
    out = tmp_path / "run"
    kill_when(command(world, out), lambda _: any(out.glob("checkpoint_*.pth")))
    first = next(out.glob("checkpoint_*.pth"))
    state = torch.load(first, weights_only=True)["state"]  # the default save_every=0: one checkpoint per epoch
    assert state["epoch"] == 1 and state["batch_in_epoch"] == 0
    assert resume_and_check(command(world, out), out, baseline) == state["step"] == int(first.stem.split("_")[1])


def test_killed_inside_the_vision_warm_up_or_the_last_itm_step_resumes_in_that_stage(world, tmp_path_factory):
    """No checkpoint yet inside the warm-up: the run starts again from nothing and ends where an uninterrupted run
    ends. Inside the last ITM step: the run continues from pre-training's last checkpoint and takes the step."""
    baseline = tmp_path_factory.mktemp("stages")
    run(command(world, baseline, *STAGES))

    warm = tmp_path_factory.mktemp("killed_in_warmup")
    kill_when(command(world, warm, *STAGES), lambda log: re.search(r"vision warm-up:\s+\d+%.*\b[1-9]\d*/150", log))
    assert not any(warm.glob("checkpoint_*.pth"))
    log = run([*command(world, warm, *STAGES), "--resume", "auto"])
    assert "no checkpoint" in log and "starting fresh" in log and "vision warm-up:" in log
    assert_same_weights(warm, baseline)

    finish = tmp_path_factory.mktemp("killed_in_itm_finish")
    kill_when(command(world, finish, *STAGES), lambda log: re.search(r"ITM on mined negatives:\s+\d+%.*\b[1-9]\d*/200",
                                                                     log))
    assert not (finish / "model.pth").exists()
    last = max(finish.glob("checkpoint_*.pth"))
    step = resume_and_check(command(world, finish, *STAGES), finish, baseline)
    assert step == int(last.stem.split("_")[1])


def test_a_killed_finetuning_resumes_too(world, baseline, tmp_path):
    def finetune(out: Path) -> list[str]:
        cmd = command(world, out, "train.save_every=2", "train.epochs=2")
        return [*cmd[:3], "finetune", "retrieval", "--init", str(baseline / "model.pth"), *cmd[4:]]

    run(finetune(tmp_path / "whole"))
    out = tmp_path / "run"
    kill_when(finetune(out), checkpoint_exists(out, "checkpoint_0000002.pth"))
    assert resume_and_check(finetune(out), out, tmp_path / "whole") >= 2
