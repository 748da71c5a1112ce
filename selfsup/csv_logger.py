"""A CSV logger that keeps a run's earlier rows: Lightning's own deletes metrics.csv when the folder is
not empty, which would throw away the history of every resumed run."""
from __future__ import annotations

import csv
import os

from pytorch_lightning.loggers import CSVLogger
from pytorch_lightning.loggers.csv_logs import ExperimentWriter


class AppendingWriter(ExperimentWriter):
    def __init__(self, log_dir: str) -> None:
        super().__init__(log_dir)
        if os.path.isfile(self.metrics_file_path):
            with open(self.metrics_file_path, newline="") as f:
                self.metrics_keys = sorted(next(csv.reader(f), []))

    def log_metrics(self, metrics_dict: dict[str, float], step: int | None = None) -> None:
        """Record a row, unless it repeats the previous one exactly (see callbacks/run_checkpoint.py)."""
        row = (step, {k: float(v) for k, v in metrics_dict.items()})
        if row == getattr(self, "_last_row", None):
            return
        self._last_row = row
        super().log_metrics(metrics_dict, step)

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


class RunCSVLogger(CSVLogger):
    """Writes RUN/metrics.csv directly in the run folder, appending across resumes, at every logging step
    (Lightning buffers 100 rows by default, which a killed job would lose)."""

    def __init__(self, run_dir: str) -> None:
        super().__init__(save_dir=run_dir, name="", version="", flush_logs_every_n_steps=1)
        self._experiment = AppendingWriter(self.log_dir)
