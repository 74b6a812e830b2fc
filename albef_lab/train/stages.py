"""What a recipe may add to a run, in the engine's own terms: stages around the main loop, a task of its own,
parameters kept frozen or trained at their own rate, and a step that readies the data.

A config hands them to the engine through `Config.plugins(task)`; the paper's config hands nothing. The engine
knows no stage by name: it runs the `before` stages on a fresh start (before the optimiser is built), the others
after the main loop, records each stage's result in the checkpoint (a run resumed after a stage does not run it
again) and gives each its share of `train.max_minutes`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from albef_lab.train.engine import Trainer
    from albef_lab.train.tasks import Task


class Stage(Protocol):
    name: str  # the key of its record (in the checkpoint, the result, the log)
    before: bool  # True: before the main loop, on a fresh start; False: after it
    kept_minutes: float  # an after-stage: of train.max_minutes, the minutes the main loop leaves to it

    def run(self, trainer: Trainer, seconds_left: float | None) -> dict:
        """Do the stage's work on `trainer.model`; return its record. A record with "steps" and "asked" says
        whether a clock cut it; "seconds" counts against train.max_minutes."""

    def every_step(self) -> str:
        """The override that runs all of the stage's steps whatever the clock (for the clock warning)."""


@dataclass
class Plugins:
    """A recipe's additions to one run (every field optional)."""

    prepare: Callable[[Trainer], None] | None = None  # before the data is read (e.g. generate a data set)
    task: type[Task] | None = None  # in place of the registered task class
    stages: list[Stage] = field(default_factory=list)
    frozen: tuple[str, ...] = ()  # parameter-name prefixes the optimiser leaves alone
    lr_scales: dict[str, float] = field(default_factory=dict)  # parameter-name prefix -> share of train.lr
