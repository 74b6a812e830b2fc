"""Small pieces every ALBEF model shares: momentum pairing, frozen copies, and a safe eval mode."""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

from albef_lab.objectives.distill import copy_params


class MomentumPairs:
    """Mixin: every child `name` that has a child `name_m` is paired with it for the EMA (the original's
    `model_pairs`, derived from the module's own registration instead of listed by hand)."""

    @property
    def model_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        children = dict(self.named_children())
        return [(m, children[f"{n}_m"]) for n, m in children.items() if f"{n}_m" in children]

    def copy_params(self) -> None:
        copy_params(self.model_pairs)

    def add_momentum_copies(self, *names: str) -> None:
        """Register a frozen copy `name_m` of each child `name`, in the given order (the state-dict order)."""
        for name in names:
            setattr(self, f"{name}_m", momentum_copy(getattr(self, name)))

    def part(self, name: str, momentum: bool = False) -> nn.Module:
        """The child `name`, or its momentum copy."""
        return getattr(self, f"{name}_m" if momentum else name)


def momentum_copy(module: nn.Module) -> nn.Module:
    """A frozen deep copy (ties inside the module are kept)."""
    m = copy.deepcopy(module)
    for p in m.parameters():
        p.requires_grad_(False)
    return m


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Evaluate inside the block; the previous train/eval mode comes back even after an exception."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
