"""The run folder: one per run, holding its config, checkpoints, metrics CSV and pictures.

    RUN/config.yaml          the composed, resolved config
    RUN/checkpoints/         last.ckpt and periodic step_XXXXXXX.ckpt
    RUN/metrics.csv          every logged metric, one row per logging step
    RUN/pictures/            what the objective draws (MAE reconstructions)
    RUN/.hydra/              Hydra's own record of the command line
"""
from __future__ import annotations

import csv
import os
from pathlib import Path

import torch

from selfsup.errors import ConfigError

CHECKPOINTS = "checkpoints"
LAST = "last.ckpt"
METRICS = "metrics.csv"


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def resolve_resume(resume: str | None, run_dir: str | Path) -> Path | None:
    """The checkpoint to resume from: `auto` = this run's last.ckpt if any; a run folder; or a .ckpt file."""
    if not resume:
        return None
    if resume == "auto":
        last = checkpoint_dir(run_dir) / LAST
        return last if last.is_file() else None
    path = Path(resume).expanduser()
    if path.is_dir():
        path = checkpoint_dir(path) / LAST
    if not path.is_file():
        raise ConfigError(f"resume={resume}: no checkpoint at {path}; give a .ckpt file, a run folder, or 'auto'")
    return path


def checkpoint_step(path: Path) -> int:
    return int(torch.load(path, map_location="cpu", weights_only=False)["global_step"])


def trim_metrics(run_dir: str | Path, last_step: int) -> int:
    """Drop metric rows logged after the checkpoint a run resumes from; they will be logged again.

    Returns the number of rows dropped. The file is rewritten beside itself and renamed into place.
    """
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return 0
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames or [], list(reader)
    keep = [r for r in rows if not r.get("step") or int(float(r["step"])) < last_step]
    if len(keep) == len(rows):
        return 0
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(keep)
    os.replace(tmp, path)
    return len(rows) - len(keep)
