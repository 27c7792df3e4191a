"""What a run shows while it goes: ``metrics.jsonl`` (one object per step, flushed) and ``loss.png``."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from ..files import append_text, staged, write_text

METRICS_FILE = "metrics.jsonl"
PLOT_FILE = "loss.png"


def read_metrics(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The records of a metrics file; a line cut short by a kill is skipped."""
    records = []
    try:
        lines = Path(path).read_text().splitlines()
    except FileNotFoundError:
        return []
    for line in lines:
        try:
            records.append(json.loads(line))
        except ValueError:
            continue
    return records


class MetricsLog:
    """Appends one JSON object per line (opened, written, closed), so a killed run leaves its log behind."""

    def __init__(self, path: str | os.PathLike, resume_step: int | None = None) -> None:
        self.path = Path(path)
        self.records: list[dict[str, Any]] = []
        if resume_step is not None:
            # Steps after the checkpoint will be run again: forget them so each step appears once.
            self.records = [r for r in read_metrics(self.path) if r.get("step", 0) <= resume_step]
            write_text(self.path, "".join(json.dumps(r) + "\n" for r in self.records), what="the metrics log",
                       option="--output")
        elif self.path.exists():
            self.path.unlink()

    def write(self, record: dict[str, Any]) -> None:
        self.records.append(record)
        append_text(self.path, json.dumps(record) + "\n", what="the metrics log", option="--output")


def plot_losses(records: list[dict[str, Any]], path: str | os.PathLike, *, baseline: float | None = None,
                title: str = "") -> None:
    """Train and validation loss against step, written atomically as a small PNG."""
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot as plt

    steps = [r["step"] for r in records if r.get("loss") is not None]  # None: a diverged step
    losses = [r["loss"] for r in records if r.get("loss") is not None]
    val = [(r["step"], r["val_loss"]) for r in records if r.get("val_loss") is not None]
    fig, ax = plt.subplots(figsize=(6, 3.6), dpi=100)
    ax.plot(steps, losses, color="tab:blue", alpha=0.3, linewidth=0.8)
    if losses:
        # Debiased exponential moving average over ~1/50 of the run: the trend through the batch noise.
        beta = 1.0 - 1.0 / max(1, len(losses) // 50)
        smooth, ema = [], 0.0
        for i, value in enumerate(losses, start=1):
            ema = beta * ema + (1.0 - beta) * value
            smooth.append(ema / (1.0 - beta**i))
        ax.plot(steps, smooth, color="tab:blue", label="train")
    if val:
        ax.plot([s for s, _ in val], [v for _, v in val], "o-", color="tab:orange", markersize=3, label="validation")
    if baseline is not None:
        ax.axhline(baseline, color="gray", linestyle="--", linewidth=1, label="unigram baseline")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (nats/token)")
    if title:
        ax.set_title(title, fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    target = Path(path)
    try:
        with staged(target.parent, what="the loss plot", option="--output") as stage:
            fig.savefig(stage.path(target.name), format="png")
    finally:
        plt.close(fig)
