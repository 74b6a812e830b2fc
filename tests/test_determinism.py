"""ShapesWorld is the same in every process, whatever Python's hash seed."""

import filecmp
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_make_world_in_two_processes_with_different_hash_seeds_is_byte_identical(tmp_path):
    outs = []
    for hash_seed in ("1", "987"):
        out = tmp_path / f"w{hash_seed}"
        env = dict(os.environ, PYTHONHASHSEED=hash_seed, PYTHONPATH=str(ROOT))
        proc = subprocess.run([sys.executable, "-m", "albef_lab", "make-world", "--out", str(out), "--seed", "7",
                               "--images", "60", "--res", "32", "--noise", "0.3", "--workers", "1", "--quiet"],
                              env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        outs.append(out)
    files = sorted(str(p.relative_to(outs[0])) for p in outs[0].rglob("*") if p.is_file())
    assert "nlvr_train.json" in files and len(files) > 60
    assert sorted(str(p.relative_to(outs[1])) for p in outs[1].rglob("*") if p.is_file()) == files
    _, mismatch, errors = filecmp.cmpfiles(outs[0], outs[1], files, shallow=False)
    assert not mismatch and not errors, mismatch
