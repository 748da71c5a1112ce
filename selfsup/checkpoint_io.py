"""Checkpoint files: written atomically, read without running pickled code.

Writing: the checkpoint goes to a temporary file in the same folder, is flushed to disk, and is renamed over
the old one, so a kill at any moment (mid-write included) leaves the previous checkpoint whole. Lightning's
own writer stages the file in the system's temp folder and moves it, which is a copy when that folder is on
another filesystem.

Reading: `torch.load(weights_only=True)`. A checkpoint that holds any other pickled object is refused with
a CheckpointError instead of being executed.
"""
from __future__ import annotations

import os
import pickle
import sys
import time
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from selfsup import runs
from selfsup.errors import ConfigError, SelfsupError

# Fault injection for tests: seconds to wait between writing the temporary file and renaming it over an
# existing checkpoint (so that a test can kill the process mid-save).
SAVE_DELAY_ENV = "SELFSUP_TEST_SAVE_DELAY_S"


class CheckpointError(SelfsupError):
    """A checkpoint that is unreadable, truncated, or not plain data."""


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint as plain data (tensors, numbers, strings, containers) or raise CheckpointError."""
    path = Path(path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        first_line = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(
            f"refusing to load {path}: it holds a pickled object that is not plain data ({first_line[:200]}); "
            "selfsup loads checkpoints with weights_only=True and never runs code stored in them"
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError) as e:
        raise CheckpointError(f"cannot read checkpoint {path}: {str(e).splitlines()[0][:200]}") from None


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to `path` through a temporary file in the same folder, fsynced, then renamed into place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        delay = float(os.environ.get(SAVE_DELAY_ENV, "0") or 0)
        if delay and path.exists():
            time.sleep(delay)
        os.replace(tmp, path)
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    finally:
        if tmp.exists():
            tmp.unlink()


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning's checkpoint plugin with atomic writes and weights-only reads."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: Any, storage_options: Any = None) -> None:
        atomic_save(checkpoint, path)

    def load_checkpoint(self, path: Any, map_location: Any = None, weights_only: bool | None = None) -> dict[str, Any]:
        return load_checkpoint(path, map_location=map_location or "cpu")


def newest_loadable(folder: Path) -> tuple[Path, int] | None:
    """The most recent checkpoint in `folder` that loads, with its global step; corrupt ones are named and skipped.

    Candidates are last.ckpt and the periodic step_*.ckpt, newest first by modification time.
    """
    candidates = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True) if folder.is_dir() else []
    for path in candidates:
        try:
            return path, int(load_checkpoint(path)["global_step"])
        except (CheckpointError, KeyError, TypeError) as e:
            print(f"warning: skipping checkpoint {path}: {e}", file=sys.stderr)
    return None


def resolve_resume(resume: str | None, run_dir: str | Path) -> tuple[Path, int] | None:
    """The checkpoint to resume from and its step: `auto` = this run's newest loadable checkpoint, if any;
    a run folder (its newest loadable checkpoint); or a .ckpt file."""
    if not resume:
        return None
    if resume == "auto":
        return newest_loadable(runs.checkpoint_dir(run_dir))
    path = Path(resume).expanduser()
    if path.is_dir():
        found = newest_loadable(runs.checkpoint_dir(path))
        if found is None:
            raise ConfigError(f"resume={resume}: no loadable checkpoint in {runs.checkpoint_dir(path)}")
        return found
    if not path.is_file():
        raise ConfigError(f"resume={resume}: no checkpoint at {path}; give a .ckpt file, a run folder, or 'auto'")
    return path, int(load_checkpoint(path)["global_step"])
