"""Training checkpoints: model, optimizer, step, RNG states, written atomically, newest found on resume.

``RUN_DIR/checkpoints/step-000500.pt`` is a plain ``torch.save`` dict of tensors, numbers and strings,
so it loads with ``weights_only=True``. It is written to a hidden temporary file, synced, then renamed:
a kill at any moment leaves either the previous checkpoint or the new one, never half of one, and a
full disk leaves no temporary file behind (``gpt2reg.files``).
"""

from __future__ import annotations

import os
import re
import warnings
from pathlib import Path
from typing import Any

import torch

from ..errors import CheckpointError
from ..files import remove_temporaries, staged

FORMAT = "gpt2reg-train-checkpoint"
_NAME = re.compile(r"^step-(\d+)\.pt$")


def rng_state() -> dict[str, Any]:
    """This process's random state (dropout draws from it)."""
    state = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def checkpoint_paths(run_dir: str | os.PathLike) -> list[Path]:
    """The run's checkpoints, oldest first."""
    folder = Path(run_dir) / "checkpoints"
    if not folder.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in folder.iterdir() if (m := _NAME.match(p.name))]
    return [p for _, p in sorted(found)]


def save_checkpoint(run_dir: str | os.PathLike, state: dict[str, Any], keep: int = 2) -> Path:
    """Write ``state`` as the checkpoint of ``state['step']`` and drop all but the newest ``keep``."""
    folder = Path(run_dir) / "checkpoints"
    path = folder / f"step-{state['step']:06d}.pt"
    with staged(folder, what="the training checkpoint", option="--output") as stage:
        torch.save({"format": FORMAT, **state}, stage.path(path.name))
    for old in checkpoint_paths(run_dir)[:-keep]:
        old.unlink(missing_ok=True)
    return path


def load_latest(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The newest readable checkpoint (an unreadable one is skipped with a warning), or None."""
    for path in reversed(checkpoint_paths(run_dir)):
        try:
            state = torch.load(path, map_location="cpu", weights_only=True)
        except Exception as exc:  # a damaged file must not block the resume from an older one
            warnings.warn(f"skipping unreadable checkpoint {path}: {exc}", stacklevel=2)
            continue
        if not isinstance(state, dict) or state.get("format") != FORMAT:
            raise CheckpointError(f"{path}: not a gpt2reg training checkpoint")
        return state
    return None


def remove_stale_temporaries(run_dir: str | os.PathLike) -> None:
    """Temporary files a killed process left behind (never valid checkpoints)."""
    root = Path(run_dir)
    for folder in (root, root / "checkpoints", root / "model"):
        remove_temporaries(folder)
