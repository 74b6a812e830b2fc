"""Pre-training from WebDataset tar shards: export round-trips the official format (read back by webdataset's own
reader too), training on shards equals training on the files bit for bit, damaged shards and samples are skipped
and counted, and under torchrun with 2 processes x 2 workers every sample is read once per epoch."""

import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
import warnings
from pathlib import Path

import pytest
import torch

from albef_lab.cli import main
from albef_lab.data.shards import ShardPretrainDataset, export_shards, shard_files
from albef_lab.data.transforms import ImageTextTransform
from albef_lab.train.engine import train
from tests.helpers import SMALL, small_cfg

ROOT = Path(__file__).resolve().parents[1]


def transform():
    return ImageTextTransform(32, train=True, randaugment=False)


def test_export_round_trips_the_official_format(world, tmp_path):
    assert main(["export-shards", str(tmp_path / "s"), "--world", str(world), "--per-shard", "7", "--quiet"]) == 0
    entries = json.loads((world / "pretrain.json").read_text())
    pattern = f"{tmp_path}/s/shard-{{00000..{(len(entries) - 1) // 7:05d}}}.tar"
    ds = ShardPretrainDataset(pattern, transform())
    assert len(shard_files(pattern)) == -(-len(entries) // 7) and len(ds) == len(entries)
    assert [{k: v for k, v in e.items() if k != "__member__"} for e in ds.entries] == entries
    for i in (0, len(entries) // 2, len(entries) - 1):  # image bytes as they were
        s, _, image = ds.members[i]
        assert ds._tar(s).reader.get_file(image)[1].getvalue() == (world / entries[i]["image"]).read_bytes()

    import webdataset as wds  # an independent reader of the same files

    samples = list(wds.WebDataset(pattern, shardshuffle=False, empty_check=False))
    assert [s["__key__"] for s in samples] == [f"{i:09d}" for i in range(len(entries))]
    assert [s["txt"].decode() for s in samples] == [e["caption"] for e in entries]
    assert [json.loads(s["json"]) for s in samples] == entries


def test_pretraining_on_shards_equals_pretraining_on_the_files(world, tmp_path):
    pattern, _ = export_shards(world / "pretrain.json", world, tmp_path / "s", per_shard=10, progress=False)
    runs = {}
    for name, extra in (("files", []), ("shards", [f"data.shards={pattern}"])):
        train(small_cfg(world, tmp_path / name, "train.max_steps=3", "data.num_workers=2", *extra))
        runs[name] = torch.load(tmp_path / name / "model.pth", weights_only=True)["model"]
    assert all(torch.equal(v, runs["shards"][k]) for k, v in runs["files"].items())


def add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


def test_damaged_shards_and_samples_are_skipped_and_counted(world, tmp_path):
    export_shards(world / "pretrain.json", world, tmp_path, per_shard=1000, prefix="good", progress=False)
    good = tmp_path / "good-00000.tar"
    (tmp_path / "cut-00000.tar").write_bytes(good.read_bytes()[: good.stat().st_size // 2 + 100])  # a died download
    png = (world / json.loads((world / "pretrain.json").read_text())[0]["image"]).read_bytes()
    with tarfile.open(tmp_path / "odd-00000.tar", "w") as tar:
        add_member(tar, "a.png", png)  # no caption
        add_member(tar, "b.txt", b"a red circle")  # no image
        add_member(tar, "c.png", png)
        add_member(tar, "c.json", b"{not json")
        add_member(tar, "d.jpg", b"\xff\xd8\xff\xe0 not really a jpeg")  # decodes to nothing: skipped at load
        add_member(tar, "d.txt", b"a blue square")
        add_member(tar, "e.png", png)
        add_member(tar, "e.json", json.dumps({"caption": ["two shapes", "a red circle"]}).encode())
    with warnings.catch_warnings(record=True) as said:
        warnings.simplefilter("always")
        ds = ShardPretrainDataset(f"{tmp_path}/{{good,cut,odd}}-00000.tar", transform())
    assert list(ds.bad_shards) == ["cut-00000.tar"]
    assert set(ds.bad_samples) == {"odd-00000.tar:a", "odd-00000.tar:b", "odd-00000.tar:c"}
    assert "no caption" in ds.bad_samples["odd-00000.tar:a"] and "no image" in ds.bad_samples["odd-00000.tar:b"]
    assert "does not parse" in ds.bad_samples["odd-00000.tar:c"]
    assert sum("unreadable shard" in str(w.message) for w in said) == 1
    assert sum("unreadable sample" in str(w.message) for w in said) == 1
    d = [e["__member__"] for e in ds.entries].index("odd-00000.tar:d")
    with pytest.warns(UserWarning, match="odd-00000.tar:d"):
        image, caption, _ = ds[d]  # the next sample instead
    assert list(ds.skipped) == ["odd-00000.tar:d"] and caption in ("two shapes", "a red circle")
    assert image.shape == (3, 32, 32)


def test_missing_shards_and_finetuning_on_shards_are_refused(world, tmp_path):
    pattern, _ = export_shards(world / "pretrain.json", world, tmp_path, per_shard=1000, progress=False)
    with pytest.raises(FileNotFoundError, match=r"1 shard\(s\) of .* not found"):
        shard_files(pattern.replace("..00000}", "..00001}"))
    with pytest.raises(ValueError, match="data.shards .* retrieval reads data.train_file"):
        train(small_cfg(world, tmp_path / "r", "train.max_steps=1", f"data.shards={pattern}"), "retrieval")


def torchrun(world: Path, out: Path, pattern: str, *extra: str, delay: float = 0.0, wait: bool = True):
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT), STEP_DELAY=str(delay))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(ROOT / "tests" / "dist_shard_reads.py"), str(world), str(out), *extra, *SMALL,
           f"data.shards={pattern}", "data.num_workers=2", "train.epochs=2", "train.max_steps=0", "train.save_every=1"]
    if not wait:
        return subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc


def reads(out: Path) -> list[list[str]]:
    return [line.split() for f in out.glob("reads-*.txt") for line in f.read_text().splitlines()]


def kill_every_process_of(out: Path) -> None:
    """SIGKILL the agent, both ranks and their loader workers at once: every process whose command line names
    `out` (torchrun's workers leave the agent's process group, so a group kill would miss them)."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and str(out).encode() in (proc / "cmdline").read_bytes():
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            continue


@pytest.fixture(scope="module")
def pairs(world, tmp_path_factory) -> str:
    """32 pairs (2 ranks x 2 batches of 8) in shards of 5."""
    tmp = tmp_path_factory.mktemp("pairs")
    (tmp / "pairs.json").write_text(json.dumps(json.loads((world / "pretrain.json").read_text())[:32]))
    return export_shards(tmp / "pairs.json", world, tmp / "s", per_shard=5, progress=False)[0]


@pytest.mark.slow
def test_two_processes_with_two_workers_read_every_sample_once_per_epoch_and_resume_after_a_kill(world, pairs,
                                                                                                  tmp_path):
    whole = tmp_path / "whole"
    torchrun(world, whole, pairs)
    rows = reads(whole)
    assert len({pid for _, pid, _, _ in rows}) >= 4  # 2 ranks x 2 loader workers did the reading
    keys = sorted({k for *_, k in rows})
    assert len(keys) == 32
    for epoch in ("0", "1"):
        assert sorted(k for _, _, ep, k in rows if ep == epoch) == keys, f"epoch {epoch}: a sample read twice or never"

    killed = tmp_path / "killed"
    proc = torchrun(world, killed, pairs, delay=2.0, wait=False)
    try:
        deadline = time.monotonic() + 240
        while not (killed / "checkpoint_0000001.pth").is_file():  # half-way through epoch 0
            assert proc.poll() is None and time.monotonic() < deadline, "the run ended before the moment to kill it"
            time.sleep(0.01)
        kill_every_process_of(killed)
    finally:
        proc.wait(30)
    assert not (killed / "model.pth").exists()
    killed_pids = {pid for _, pid, _, _ in reads(killed)}
    torchrun(world, killed, pairs, "--resume", "auto")
    resumed = [row for row in reads(killed) if row[1] not in killed_pids]
    first_half = [k for _, _, ep, k in resumed if ep == "0"]
    assert len(first_half) == len(set(first_half)) == 16  # the rest of epoch 0: its second batch on both ranks
    assert sorted(k for _, _, ep, k in resumed if ep == "1") == keys  # then epoch 1, each sample once
    final = [torch.load(d / "model.pth", weights_only=True)["model"] for d in (whole, killed)]
    assert all(torch.equal(v, final[1][k]) for k, v in final[0].items())
