"""Draw a run's curves from its metrics.jsonl (matplotlib, PNG)."""

from __future__ import annotations

import json
from pathlib import Path


def read_metrics(path: str | Path, running: bool = False) -> list[dict]:
    """A run's rows. `running`: the run may be writing its last line right now; a half-written one is left out."""
    path = Path(path)
    if path.is_dir():
        path = path / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"no metrics file at {path}")
    lines = [line for line in path.read_text().splitlines() if line.strip()]
    if running and lines:
        try:
            json.loads(lines[-1])
        except ValueError:
            lines.pop()
    return [json.loads(line) for line in lines]


def plot_metrics(run: str | Path, out: str | Path | None = None) -> Path:
    from matplotlib.figure import Figure  # no pyplot: the caller's backend (a notebook's inline one) stays as it is

    rows = read_metrics(run)
    train = [r for r in rows if "loss" in r]
    val = [r for r in rows if any(k.startswith("val_") for k in r)]
    fig = Figure(figsize=(15, 4))
    axes = fig.subplots(1, 3)
    for key in ("loss", "loss_ita", "loss_itm", "loss_mlm"):
        if not train or key not in train[0]:  # a downstream task logs its one loss only
            continue
        axes[0].plot([r["step"] for r in train], [r[key] for r in train], label=key)
    axes[0].set(title="training losses", xlabel="step")
    axes[0].legend()
    ax = axes[1]
    ax.plot([r["step"] for r in train], [r["lr"] for r in train], color="tab:blue", label="lr")
    ax.set(title="schedule", xlabel="step", ylabel="learning rate")
    ax2 = ax.twinx()
    ax2.plot([r["step"] for r in train], [r["alpha"] for r in train], color="tab:orange", label="alpha")
    ax2.set_ylabel("MoD alpha")
    for key in ("val_txt_r1", "val_img_r1", "val_img_r5", "val_itm_acc"):
        if val and key in val[0]:
            axes[2].plot([r["step"] for r in val], [r[key] for r in val], marker="o", label=key[4:])
    axes[2].set(title="held-out zero-shot retrieval / ITM (%)", xlabel="step")
    if val:
        axes[2].legend()
    fig.tight_layout()
    out = Path(out) if out else (Path(run) if Path(run).is_dir() else Path(run).parent) / "curves.png"
    fig.savefig(out, dpi=100)
    return out
