"""The CI guard itself: with CI set, a skipped test fails the run; a wrong ALBEF_REFERENCE_DIR is an error."""

import os
import subprocess
import sys
from pathlib import Path

CONFTEST = Path(__file__).with_name("conftest.py")


def run_pytest(tmp_path: Path, body: str, **env: str) -> subprocess.CompletedProcess:
    (tmp_path / "conftest.py").write_text(CONFTEST.read_text())
    (tmp_path / "test_it.py").write_text(body)
    clean = {k: v for k, v in os.environ.items() if k not in ("CI", "ALBEF_REFERENCE_DIR")}
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                           str(tmp_path)], capture_output=True, text=True, env={**clean, **env}, cwd=tmp_path)


SKIPPING = "import pytest\n\ndef test_runs():\n    pass\n\ndef test_needs_a_package():\n    pytest.skip('no gizmo')\n"


def test_a_skip_fails_the_run_in_ci_and_passes_outside(tmp_path):
    local = run_pytest(tmp_path, SKIPPING)
    assert local.returncode == 0, local.stdout
    ci = run_pytest(tmp_path, SKIPPING, CI="1")
    assert ci.returncode == 1, ci.stdout
    assert "1 test(s) skipped" in ci.stdout and "test_needs_a_package" in ci.stdout and "no gizmo" in ci.stdout
    clean = run_pytest(tmp_path, "def test_runs():\n    pass\n", CI="1")
    assert clean.returncode == 0, clean.stdout


def test_a_wrong_reference_dir_is_an_error_not_a_fallback(tmp_path):
    out = run_pytest(tmp_path, "def test_runs():\n    pass\n", ALBEF_REFERENCE_DIR=str(tmp_path / "nowhere"))
    assert out.returncode != 0 and "has no fixtures/ folder" in out.stdout + out.stderr


def test_ci_runs_the_readmes_test_command():
    """CI runs what the README tells a new user to run: its second set-up command is the last line of .ci/run."""
    import re

    top = Path(__file__).resolve().parents[1]
    setup = re.search(r"## Set-up.*?```bash\n(.*?)```", (top / "README.md").read_text(), re.S).group(1)
    test_command = setup.strip().splitlines()[-1].split("#")[0].strip()
    assert test_command.startswith("python -m pytest"), setup
    ci = [x.strip() for x in (top / ".ci" / "run").read_text().splitlines() if x.strip() and not x.startswith("#")]
    assert ci[-1] == test_command
