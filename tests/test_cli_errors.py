"""Bad input at the command line: one clear line that says what and where; bugs keep their traceback."""

import argparse
import os

import pytest
import torch

from albef_lab.cli import main
from albef_lab.models.checkpoint import CheckpointError, read_file


def test_yaml_syntax_error_names_file_line_and_column(tmp_path, capsys):
    bad = tmp_path / "bad.yaml"
    bad.write_text("model:\n  embed_dim: 64\n  text: [1, 2\ntrain:\n  lr: 1e-3\n")
    assert main(["info", "--config", str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"{bad}:4:" in err and "invalid YAML" in err


def test_unknown_config_key_is_one_line(capsys):
    assert main(["info", "model.nope=3"]) == 2
    assert "unknown config key 'model.nope'" in capsys.readouterr().err


def test_debug_shows_the_traceback_of_a_user_error(tmp_path):
    with pytest.raises(FileNotFoundError):
        main(["--debug", "verify-reference", str(tmp_path / "none.pt")])


def test_a_bug_is_not_swallowed(monkeypatch):
    import albef_lab.cli as cli

    def broken(args):
        raise TypeError("a programming error")

    monkeypatch.setattr(cli, "cmd_info", broken)
    with pytest.raises(TypeError, match="programming error"):
        main(["info"])


@pytest.mark.parametrize("content", [b"just some text, not a checkpoint\n", os.urandom(256)])
def test_text_or_random_bytes_are_not_a_pytorch_checkpoint(tmp_path, content):
    p = tmp_path / "x.pth"
    p.write_bytes(content if content[:1] not in (b"\x80", b"P") else b"X" + content)
    with pytest.raises(CheckpointError, match="is not a PyTorch checkpoint") as e:
        read_file(p)
    assert "trust_pickle" not in str(e.value)


def test_truncated_checkpoint_is_damaged_not_untrusted(tmp_path):
    p = tmp_path / "t.pth"
    torch.save({"model": {"w": torch.ones(1000)}}, p)
    p.write_bytes(p.read_bytes()[:600])
    with pytest.raises(CheckpointError, match="truncated or corrupt") as e:
        read_file(p)
    assert "trust_pickle" not in str(e.value)


def test_a_real_pickle_gets_the_trust_advice(tmp_path, capsys):
    p = tmp_path / "official_like.pth"
    torch.save({"model": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=1e-4)}, p)
    with pytest.raises(CheckpointError, match="trust_pickle=True"):
        read_file(p)
    assert read_file(p, trust_pickle=True)["args"].lr == 1e-4
    assert main(["evaluate", "ve", "--checkpoint", str(p)]) == 2
    assert "safe load" in capsys.readouterr().err
