"""Where evaluation results go: RUN/results.json (one key per protocol, merged), a per-epoch CSV, wandb, and
what a protocol trains that is worth keeping (LoRA's adapter, in peft's format: RUN/adapters/<protocol>/).

results.json is rewritten beside itself and renamed into place, so evaluations of one run by several
protocols (or processes one after another) each keep their entry.
"""
from __future__ import annotations

import csv
import json
import os
from pathlib import Path
from typing import Any

from selfsup.errors import DataError

RESULTS = "results.json"
ADAPTERS = "adapters"  # RUN/adapters/<results key>/: adapter_config.json + adapter_model.safetensors (peft)
RANDOM_INIT_SUFFIX = "@random_init"  # the key of a protocol's random-initialisation baseline (eval.py weights=random)


def read_results(path: Path) -> dict[str, Any]:
    """An existing results.json, or {} when there is none; a one-line DataError when it cannot be read, so that
    an evaluation never replaces the other protocols' results it could not read."""
    if not path.is_file():
        return {}
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise DataError(f"cannot read {path} ({type(e).__name__}: {' '.join(str(e).split())[:120]}); fix it or move "
                        "it aside (it is never overwritten)") from None
    if not isinstance(data, dict):
        raise DataError(f"{path} is not a results file (a JSON object of protocol: metrics); fix it or move it aside")
    return data


def update_results(path: Path, protocol: str, entry: dict[str, Any]) -> dict[str, Any]:
    """Set `protocol`'s entry in results.json, keeping the other protocols'; returns the whole file's content."""
    data = read_results(path)
    data[protocol] = entry
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)
    return data


class EvalLogger:
    """Per-epoch metrics of one evaluation: `FOLDER/metrics.csv` and, unless disabled, a wandb run in the
    training run's project and group (offline by default, like training)."""

    def __init__(self, folder: Path, csv_enabled: bool = True, wandb: dict[str, Any] | None = None,
                 name: str = "eval", config: dict[str, Any] | None = None) -> None:
        self.folder = folder
        self.csv_enabled = csv_enabled
        self.rows: list[dict[str, Any]] = []
        self.run = None
        if csv_enabled or (wandb and wandb.get("mode", "disabled") != "disabled"):
            folder.mkdir(parents=True, exist_ok=True)
        if csv_enabled and (folder / "metrics.csv").exists():
            (folder / "metrics.csv").unlink()  # a new evaluation replaces the previous one's curve
        if wandb and wandb.get("mode", "disabled") != "disabled":
            import wandb as wandb_lib

            self.run = wandb_lib.init(project=wandb.get("project"), group=wandb.get("group"), name=name,
                                      tags=list(wandb.get("tags") or []), mode=wandb["mode"], dir=str(folder),
                                      job_type="eval", config=config or {}, reinit="finish_previous")

    def __call__(self, metrics: dict[str, Any], step: int) -> None:
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        self.rows.append(row)
        if self.csv_enabled:
            fields = list(dict.fromkeys(k for r in self.rows for k in r))
            with (self.folder / "metrics.csv").open("w", newline="") as f:
                writer = csv.DictWriter(f, fieldnames=fields)
                writer.writeheader()
                writer.writerows(self.rows)
        if self.run is not None:
            self.run.log({k: v for k, v in row.items() if k != "step"}, step=step)

    def finish(self, summary: dict[str, Any]) -> None:
        if self.run is not None:
            self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
            self.run.finish()
            self.run = None
