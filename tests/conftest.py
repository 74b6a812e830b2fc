import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def reference_dir() -> Path | None:
    """The reference data: $ALBEF_REFERENCE_DIR, else ../shared/reference beside the checkout."""
    env = os.environ.get("ALBEF_REFERENCE_DIR")
    candidates = [Path(env)] if env else []
    candidates.append(ROOT.parent / "shared" / "reference")
    for c in candidates:
        if (c / "fixtures").is_dir():
            return c
    return None


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
