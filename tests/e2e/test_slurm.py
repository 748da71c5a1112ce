"""Against a real one-node SLURM cluster (slurm/local_cluster.sh): sbatch DDP, submitit sweeps, preemption.

Skipped, with the reason, only where slurm-wlm is absent or we are not root; CI installs it and sets
SELFSUP_REQUIRE_SLURM=1, which turns a skip into a failure.
"""
from __future__ import annotations

import csv
import subprocess
import sys
import time
from pathlib import Path

import torch
from conftest import ROOT, TINY, run_train
from slurm_utils import job_field, sbatch, wait_for_job

CPU_JOB = ["--partition=local", "--gpus-per-node=0", "--cpus-per-task=1", "--time=15"]
SMALL = [a for a in TINY if a not in ("trainer=cpu",)] + [
    "objective=mae", "data=synthetic", "trainer.accelerator=cpu", "trainer.precision=32-true",
    "trainer.log_every_n_steps=1", "trainer.limit_val_batches=2", "data.batch_size=32",
]


def train_losses(run_dir: Path) -> dict[int, float]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    steps = [int(r["step"]) for r in rows]
    assert len(steps) == len(set(steps)), f"duplicated rows: {sorted(steps)}"
    return {int(r["step"]): float(r["train/loss"]) for r in rows}


def test_sbatch_two_tasks_train_with_ddp(slurm, tmp_path):
    out = tmp_path / "job.out"
    job = sbatch([*CPU_JOB, "--ntasks-per-node=2", f"--output={out}", str(ROOT / "slurm" / "train.sbatch"),
                  *SMALL, "trainer.strategy=ddp", "trainer.max_steps=3"])
    assert wait_for_job(job) == "COMPLETED", out.read_text()[-3000:]
    log = out.read_text()
    assert "process 0 of world size 2" in log and "process 1 of world size 2" in log
    ckpt = torch.load(ROOT / "runs" / "slurm" / job / "checkpoints" / "last.ckpt", map_location="cpu",
                      weights_only=False)
    assert ckpt["global_step"] == 3


def test_preempted_job_requeues_and_resumes_to_the_same_end(slurm, tmp_path):
    steps = 24
    args = [*SMALL, f"trainer.max_steps={steps}"]
    reference = tmp_path / "reference"
    assert run_train([*args, f"run_dir={reference}"]).returncode == 0

    out = tmp_path / "job.out"
    job = sbatch([*CPU_JOB, "--ntasks-per-node=1", "--open-mode=append", f"--output={out}",
                  str(ROOT / "slurm" / "train.sbatch"), *args])
    run_dir = ROOT / "runs" / "slurm" / job
    deadline = time.time() + 240
    while time.time() < deadline:  # signal once a third of the steps are logged
        if (run_dir / "metrics.csv").is_file() and len(train_losses(run_dir)) >= steps // 3:
            break
        time.sleep(0.5)
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    assert wait_for_job(job) == "COMPLETED", out.read_text()[-3000:]
    log = out.read_text()
    assert job_field(job, "Restarts") == "1"
    assert "SIGUSR1 received" in log and "requeued SLURM job" in log and "restart 1" in log
    resumed_at = int(log.split("resuming from ")[1].split("(step ")[1].split(";")[0])
    assert steps // 3 <= resumed_at < steps

    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    ref = torch.load(reference / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == ref["global_step"] == steps
    assert train_losses(run_dir) == train_losses(reference)  # every step once, same values
    for name, tensor in ref["state_dict"].items():
        assert torch.equal(tensor, ckpt["state_dict"][name]), name


def test_the_cluster_script_stops_only_the_daemons_it_started(slurm, tmp_path):
    """Without its record of what it started, `stop` leaves running daemons alone (a cluster of one's own)."""
    record = Path("/var/spool/slurm-selfsup/started")
    kept = tmp_path / "started"
    if record.exists():
        record.rename(kept)
    try:
        subprocess.run(["bash", str(ROOT / "slurm" / "local_cluster.sh"), "stop"], check=True, timeout=60)
        running = subprocess.run(["pgrep", "-x", "slurmctld"], capture_output=True).returncode == 0
        assert running and subprocess.run(["sinfo", "-h"], capture_output=True).returncode == 0
    finally:
        if kept.exists():
            kept.rename(record)


def test_the_slurm_launcher_on_a_cluster_without_gpus_names_the_key_to_set(slurm, tmp_path):
    """Its default gpus_per_node=1 on a GPU-less cluster ended in a raw submitit traceback ("Invalid generic
    resource"): now one line, before anything is submitted."""
    r = subprocess.run([sys.executable, str(ROOT / "train.py"), "-m", "hydra/launcher=slurm", "objective=mae",
                        "seed=0,1", f"hydra.sweep.dir={tmp_path / 'sweep'}"], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert r.returncode == 2 and "Traceback" not in r.stderr
    assert r.stderr.strip().splitlines()[-1].startswith("error: hydra/launcher=slurm asks for 1 GPU per node")
    assert "hydra.launcher.gpus_per_node=0" in r.stderr and not (tmp_path / "sweep").exists()
