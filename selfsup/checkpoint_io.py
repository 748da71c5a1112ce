"""Checkpoint files: written atomically, read without running pickled code.

Writing: the checkpoint goes to a temporary file in the same folder, is flushed to disk, and is renamed over
the old one, so a kill at any moment (mid-write included) leaves the previous checkpoint whole. Lightning's
own writer stages the file in the system's temp folder and moves it, which is a copy when that folder is on
another filesystem.

Reading: `torch.load(weights_only=True)`. A checkpoint that holds any other pickled object is refused with
a CheckpointError instead of being executed.

Verifying: each checkpoint carries a SHA-256 digest of its contents (every tensor's dtype, shape and bytes, every
key and value, in order), computed before writing and checked after reading. torch.load checks no CRC, so a
bit-flip in a tensor, or bytes overwritten in the optimizer state, would otherwise load and train on; a file
that fails the digest is treated like an unreadable one. The digest is of the contents rather than of the file
so that it can live inside the file it checks: one file, renamed into place at once, never a pair out of step.
"""
from __future__ import annotations

import errno
import hashlib
import math
import os
import shutil
import sys
import time
from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from selfsup import runs
from selfsup.errors import ConfigError, SelfsupError, one_line

# Fault injection for tests: seconds to wait between writing the temporary file and renaming it over an
# existing checkpoint (so that a test can kill the process mid-save).
SAVE_DELAY_ENV = "SELFSUP_TEST_SAVE_DELAY_S"


DIGEST = "selfsup_digest"


class CheckpointError(SelfsupError):
    """A checkpoint that is unreadable, truncated, altered since it was written, or not plain data."""


def _feed(h: Any, obj: Any) -> int:
    """Feed `obj` into the hash `h` (see content_digest); returns the bytes of tensor data fed."""
    if isinstance(obj, torch.Tensor):
        t = obj.detach().cpu().contiguous()
        h.update(f"T{t.dtype}{tuple(t.shape)}".encode())
        if t.numel():
            h.update(t.reshape(-1).view(torch.uint8).numpy())
        return t.numel() * t.element_size()
    if isinstance(obj, dict):
        h.update(f"D{len(obj)}".encode())
        return sum(_feed(h, k) + _feed(h, v) for k, v in obj.items())
    if isinstance(obj, (list, tuple)):
        h.update(f"L{len(obj)}".encode())
        return sum(_feed(h, v) for v in obj)
    h.update(f"V{type(obj).__name__}:{obj!r};".encode())
    return 0


def content_digest(obj: Any) -> tuple[str, int]:
    """(SHA-256 hex digest of a checkpoint's contents, bytes of tensor data in it)."""
    h = hashlib.sha256()
    size = _feed(h, obj)
    return h.hexdigest(), size


def load_checkpoint(path: str | Path, map_location: Any = "cpu") -> dict[str, Any]:
    """Load a checkpoint as plain data (tensors, numbers, strings, containers) and check its digest, or raise a
    one-line CheckpointError naming the file."""
    path = Path(path)
    if path.is_file() and path.stat().st_size == 0:
        raise CheckpointError(f"checkpoint {path} is empty (0 bytes); it is not used")
    try:
        data = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # torch.load fails in many ways on a file that is not a checkpoint (KeyError, ...)
        text = " ".join(str(e).split())
        if "GLOBAL" in text:
            raise CheckpointError(
                f"refusing to load {path}: it holds a pickled object that is not plain data ({text[-160:]}); "
                "selfsup loads checkpoints with weights_only=True and never runs code stored in them") from None
        raise CheckpointError(f"cannot read checkpoint {path}: not a whole checkpoint file "
                              f"({type(e).__name__}: {text[:120]})") from None
    expected = data.pop(DIGEST, None) if isinstance(data, dict) else None
    if expected is None:
        raise CheckpointError(f"checkpoint {path} carries no selfsup digest: it was not written by selfsup's "
                              "trainer, so it is not used")
    if content_digest(data)[0] != expected:
        raise CheckpointError(f"checkpoint {path} fails its digest check: its contents changed after it was "
                              "written (a disk, copy or transfer error); it is not used")
    return data


def finite(checkpoint: dict[str, Any]) -> bool:
    """Whether every floating-point tensor of the weights and the optimizer state is finite."""
    tensors: list[torch.Tensor] = []

    def collect(obj: Any) -> None:
        if isinstance(obj, torch.Tensor) and obj.is_floating_point():
            tensors.append(obj)
        elif isinstance(obj, dict):
            for value in obj.values():
                collect(value)
        elif isinstance(obj, (list, tuple)):
            for value in obj:
                collect(value)

    collect(checkpoint.get("state_dict", {}))
    collect(checkpoint.get("optimizer_states", []))
    return all(bool(torch.isfinite(t).all()) for t in tensors)


def largest_weight(checkpoint: dict[str, Any]) -> float:
    """The largest absolute value among the floating-point weights."""
    values = [t.abs().max().item() for t in checkpoint.get("state_dict", {}).values()
              if isinstance(t, torch.Tensor) and t.is_floating_point() and t.numel()]
    return max(values, default=0.0)


def write_failure(error: Exception, path: Path, size: int) -> SelfsupError:
    """A checkpoint that cannot be written, in one line; on a full disk, how much space it needs and where."""
    full = getattr(error, "errno", None) == errno.ENOSPC or "No space left" in str(error)
    if not full:
        text = " ".join(str(error).split())[:200]
        return CheckpointError(f"cannot write checkpoint {path} ({text}); the previous checkpoint is kept")
    free = shutil.disk_usage(path.parent).free
    return CheckpointError(f"no space left on the device to write checkpoint {path}: it needs about "
                           f"{math.ceil(size / 2**20)} MiB and {free / 2**20:.1f} MiB are free; the previous "
                           "checkpoint is kept; free some space and resume=auto, or move the run folder to a larger "
                           "disk and resume=auto there (run_dir=PATH)")


def atomic_save(obj: Any, path: str | Path) -> None:
    """torch.save to `path` through a temporary file in the same folder, fsynced, then renamed into place; a
    dict gets its content digest (DIGEST) added."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    size = 0
    if isinstance(obj, dict):
        digest, size = content_digest(obj)
        obj = {**obj, DIGEST: digest}
    try:
        try:
            with open(tmp, "wb") as f:
                torch.save(obj, f)
                f.flush()
                os.fsync(f.fileno())
        except (OSError, RuntimeError) as e:  # torch.save wraps a full disk in a RuntimeError
            if "DataLoader worker (pid" in str(e):  # a worker died meanwhile (its signal handler raises anywhere):
                raise  # not a write failure; the run names it (commands/pretrain.explain)
            raise write_failure(e, path, size) from None
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


def newest_first(folder: Path) -> list[Path]:
    """The checkpoints of a checkpoint folder, newest first: last.ckpt (written at every save), then the periodic
    step_XXXXXXX.ckpt by step, then any other .ckpt by modification time. Not by modification time alone: a
    copied run folder (cp -r, a download) has the copy's times."""
    def order(path: Path) -> tuple[int, int, float]:
        step = path.stem.removeprefix("step_")
        return (path.name == "last.ckpt", int(step) if step.isdigit() else -1, path.stat().st_mtime)

    return sorted(folder.glob("*.ckpt"), key=order, reverse=True) if folder.is_dir() else []


def newest_loadable(folder: Path) -> tuple[Path, int] | None:
    """The most recent checkpoint in `folder` that passes its checks, with its global step; the others are named
    on one line each and skipped (resume=auto)."""
    for path in newest_first(folder):
        try:
            return path, checkpoint_step(path)
        except CheckpointError as e:
            print(f"warning: skipping checkpoint: {one_line(e)}", file=sys.stderr)
    return None


def last_good(folder: Path) -> tuple[Path, int, float] | None:
    """(path, step, largest absolute weight) of the most recent checkpoint whose weights and optimizer state are
    all finite: what a run stopped by a non-finite loss can restart from."""
    for path in newest_first(folder):
        try:
            checkpoint = load_training_checkpoint(path)
        except CheckpointError:
            continue
        if finite(checkpoint):
            return path, checkpoint["global_step"], largest_weight(checkpoint)
    return None


def load_training_checkpoint(path: Path) -> dict[str, Any]:
    """A verified checkpoint of a training run (CheckpointError for anything else)."""
    checkpoint = load_checkpoint(path)
    if not isinstance(checkpoint.get("global_step"), int):
        raise CheckpointError(f"{path} is not a training checkpoint (no global_step); give one from RUN/checkpoints/")
    return checkpoint


def checkpoint_step(path: Path) -> int:
    return load_training_checkpoint(path)["global_step"]


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
    return path, checkpoint_step(path)
