"""The run's loggers: each logged step once, and a CSV file that survives resumes.

RunCheckpoint (callbacks/run_checkpoint.py) sends a step's metrics before its checkpoint is written, so that a kill
during the write cannot lose them; Lightning then sends the same row again. Both loggers drop that repeat.
Lightning's own CSV logger also deletes metrics.csv when the folder is not empty, which would throw away the
history of every resumed run.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

from pytorch_lightning.loggers import CSVLogger, WandbLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter

from selfsup.errors import DataError
from selfsup.evaluation.comparison import read_csv_rows, read_wandb_rows
from selfsup.runs import METRICS


class OnceAStep:
    """Logger mixin: a row that repeats the previous one exactly (same step, same values) is dropped."""

    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        try:
            row = (step, {k: float(v) for k, v in metrics.items()})
        except (TypeError, ValueError):  # pictures and other non-scalars: never a repeat of the step's metrics
            row = None
        if row is not None and row == getattr(self, "_last_row", None):
            return
        self._last_row = row
        super().log_metrics(metrics, step)


class AppendingWriter(ExperimentWriter):
    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))

    def save(self) -> None:
        """Write the pending rows; a full disk or a failing write is one line naming the file."""
        try:
            super().save()
        except OSError as e:
            raise DataError(f"cannot write {self.metrics_file_path} ({e.strerror or e}); checkpoints so far are kept: "
                            "free some space, then resume=auto") from None

    def _check_log_dir_exists(self) -> None:
        """Keep the existing file: a resumed run appends to it."""

    def _rewrite_with_new_header(self, fieldnames: list[str]) -> None:
        """Rewrite beside the file and rename into place, so a kill never leaves half a file."""
        with open(self.metrics_file_path, newline="") as f:
            rows = list(csv.DictReader(f))
        tmp = self.metrics_file_path + ".tmp"
        with open(tmp, "w", newline="") as f:
            writer = csv.DictWriter(f, fieldnames=fieldnames)
            writer.writeheader()
            writer.writerows(rows)
        os.replace(tmp, self.metrics_file_path)


class RunCSVLogger(OnceAStep, CSVLogger):
    """Writes RUN/metrics.csv directly in the run folder, appending across resumes, at every logging step
    (Lightning buffers 100 rows by default, which a killed job would lose)."""

    def __init__(self, run_dir: str) -> None:
        super().__init__(save_dir=run_dir, name="", version="", flush_logs_every_n_steps=1)
        self._experiment = AppendingWriter(self.log_dir)


class RunWandbLogger(OnceAStep, WandbLogger):
    """Lightning's wandb logger, each step once."""


def backfill_wandb(logger: WandbLogger, run_dir: Path, before_step: int) -> int:
    """Send the offline wandb run the metrics.csv rows before `before_step` that its history lacks; returns how many.

    A killed process loses the rows wandb's service had not yet written (metrics.csv is flushed row by row): the
    resumed run fills them in, so that each step is in the wandb history once, as it is in the CSV.
    """
    if not (run_dir / METRICS).is_file():
        return 0
    logged: dict[int, set[str]] = {}  # step -> the keys the history has at that step
    for row in read_wandb_rows(run_dir):
        if "step" in row:
            logged.setdefault(int(row["step"]), set()).update(row)
    missing = [r for r in read_csv_rows(run_dir / METRICS) if "step" in r and int(r["step"]) < before_step and
               not set(r) <= logged.get(int(r["step"]), set())]
    for row in missing:
        logger.log_metrics({k: v for k, v in row.items() if k != "step"}, int(row["step"]))
    return len(missing)
