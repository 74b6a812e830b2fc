"""Opt-in recording of a model's intermediate tensors.

`albef_lab.reference` compares every intermediate with the original's; instead of threading a dict
through every signature, the models call `record(name=tensor)`, which does nothing unless a
`recording()` block is active.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

_active: list[dict[str, Any]] = []


@contextmanager
def recording() -> Iterator[dict[str, Any]]:
    """Collect what the models `record` inside the block into the yielded dict (innermost block wins)."""
    rec: dict[str, Any] = {}
    _active.append(rec)
    try:
        yield rec
    finally:
        _active.pop()


def record(**values: Any) -> None:
    if _active:
        _active[-1].update(values)


def is_recording() -> bool:
    """For values that cost something to build only for the record."""
    return bool(_active)
