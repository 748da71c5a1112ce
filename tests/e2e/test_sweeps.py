"""Sweeps keep their runs apart: a local multirun, as the issue's user typed it, gives each job its own run
folder, metrics.csv and offline wandb run holding only that job's metrics (they used to share the first job's)."""
from __future__ import annotations

import csv
import os
import subprocess
import sys

from conftest import ROOT

from selfsup.evaluation.wandb_offline import history, offline_runs


def test_a_local_multirun_gives_each_job_its_own_wandb_run(tmp_path):
    sweep = tmp_path / "sweep"
    command = [sys.executable, str(ROOT / "train.py"), "-m", "objective=mae,simclr", "data=synthetic",
               "data.num_samples=256", "data.num_val_samples=64", "data.batch_size=16", "trainer.max_steps=3",
               "trainer.log_every_n_steps=10", "data.num_workers=0", f"hydra.sweep.dir={sweep}"]
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="2")
    r = subprocess.run(command, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    jobs = sorted(p for p in sweep.iterdir() if p.is_dir() and (p / "config.yaml").is_file())
    assert [p.name for p in jobs] == ["0_mae_seed0", "1_simclr_seed0"]
    for job in jobs:
        with (job / "metrics.csv").open(newline="") as f:
            rows = list(csv.DictReader(f))
        columns = set(rows[0])
        # a run shorter than trainer.log_every_n_steps still logs its loss (at its last step)
        assert [int(row["step"]) for row in rows if row.get("train/loss")] == [2]
        assert (job / "checkpoints" / "last.ckpt").is_file()
        runs = offline_runs(job)
        assert len(runs) == 1, runs  # its own wandb run, not the first job's
        logged = {key for row in history(runs[0]) for key in row if not key.startswith("pictures/")}  # images
        logged -= {"step", "wandb/runtime_s", "epoch"}
        assert logged and logged <= columns, logged - columns  # only this job's metrics
