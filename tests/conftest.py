import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def reference_dir() -> Path | None:
    """The reference data: $ALBEF_REFERENCE_DIR (which must hold it), else ../shared/reference beside the
    checkout."""
    env = os.environ.get("ALBEF_REFERENCE_DIR")
    if env:
        if not (Path(env) / "fixtures").is_dir():
            raise pytest.UsageError(f"ALBEF_REFERENCE_DIR={env} has no fixtures/ folder: point it at the reference "
                                    "data (shared/reference), or unset it")
        return Path(env)
    default = ROOT.parent / "shared" / "reference"
    return default if (default / "fixtures").is_dir() else None


def pytest_configure(config):
    reference_dir()  # a wrong ALBEF_REFERENCE_DIR stops the run before any test
    if os.environ.get("PYTEST_XDIST_WORKER"):  # `-n N`: N workers share the cores, one thread each
        os.environ["OMP_NUM_THREADS"] = "1"  # and so do the processes the tests start
        torch.set_num_threads(1)


def pytest_collection_modifyitems(config, items):
    """The longest chain first: the first test of the trained model builds it (on one worker, while the others
    run the rest), slow tests next, the trained model's other tests last (by then it is built)."""
    trained = [i for i in items if "pretrained" in getattr(i, "fixturenames", ())]
    slow = [i for i in items if i.get_closest_marker("slow") and i not in trained]
    rest = [i for i in items if i not in trained and i not in slow]
    items[:] = trained[:1] + slow + rest + trained[1:]


@pytest.fixture(scope="module")
def world(tmp_path_factory) -> Path:
    """A small ShapesWorld (20 images at 32 px) for the engine's, resume's and shards' tests; a module that needs
    another world defines its own `world`."""
    from albef_lab.shapesworld.export import WorldSettings, write_world

    out = tmp_path_factory.mktemp("w")
    write_world(WorldSettings(out=str(out), images=20, seed=2, res=32, workers=1), progress=False)
    return out


@pytest.fixture(scope="session")
def demo_files(tmp_path_factory):
    """(world, pre-training model, VQA model): briefly trained tiny models for the app's tests, built once."""
    from tests.helpers import demo_models

    return demo_models(tmp_path_factory.mktemp("demo_models"))


def shared_path(tmp_path_factory, name: str) -> Path:
    """A path every worker of this run sees (`-n N` workers share the parent of their temp folders)."""
    base = tmp_path_factory.getbasetemp()
    return (base.parent if os.environ.get("PYTEST_XDIST_WORKER") else base) / name


_SKIPPED: list[str] = []


def pytest_runtest_logreport(report):
    if report.skipped and not hasattr(report, "wasxfail"):
        _SKIPPED.append(f"{report.nodeid}: {report.longrepr[2] if isinstance(report.longrepr, tuple) else ''}")


def pytest_sessionfinish(session, exitstatus):
    """In CI a skipped test is a missing install step (a package, the browser, the reference data): fail."""
    if os.environ.get("CI") and _SKIPPED and session.exitstatus == 0:
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        if reporter is not None:
            reporter.write_line(f"CI: {len(_SKIPPED)} test(s) skipped; in CI every test must run:", red=True)
            for line in _SKIPPED[:20]:
                reporter.write_line(f"  {line}", red=True)


@pytest.fixture(scope="session")
def reference() -> Path:
    d = reference_dir()
    if d is None:
        if os.environ.get("CI"):
            pytest.fail("reference data not found: set ALBEF_REFERENCE_DIR or place shared/reference beside the repo")
        pytest.skip("reference data (shared/reference) not available")
    return d


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)
