"""Helpers for tests against the real one-node SLURM cluster of slurm/local_cluster.sh."""
from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path

from conftest import ROOT


def slurm_unavailable_reason() -> str | None:
    if shutil.which("sbatch") is None or shutil.which("slurmctld") is None:
        return "slurm-wlm is not installed (apt-get install -y slurm-wlm munge)"
    if os.geteuid() != 0:
        return "the local SLURM cluster runs slurmctld and slurmd as root"
    return None


def start_cluster() -> None:
    subprocess.run(["bash", str(ROOT / "slurm" / "local_cluster.sh"), "start"], check=True, capture_output=True,
                   timeout=120)


def stop_cluster() -> None:
    """Stops the daemons start_cluster started, and no others."""
    subprocess.run(["bash", str(ROOT / "slurm" / "local_cluster.sh"), "stop"], check=True, capture_output=True,
                   timeout=120)


def job_field(job_id: str, field: str) -> str | None:
    out = subprocess.run(["scontrol", "show", "job", job_id], capture_output=True, text=True).stdout
    for token in out.split():
        if token.startswith(field + "="):
            return token.split("=", 1)[1]
    return None


def wait_for_job(job_id: str, timeout: float = 300, hurry_requeue: bool = True) -> str:
    """Wait until the job has ended; a requeued job is made eligible at once instead of after SLURM's delay."""
    deadline = time.time() + timeout
    while time.time() < deadline:
        state = job_field(job_id, "JobState")
        if state in ("COMPLETED", "FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            return state
        if hurry_requeue and state == "PENDING" and (job_field(job_id, "Restarts") or "0") != "0":
            subprocess.run(["scontrol", "update", f"JobId={job_id}", "StartTime=now"], capture_output=True)
        time.sleep(1)
    subprocess.run(["scancel", job_id])
    raise TimeoutError(f"SLURM job {job_id} did not end within {timeout} s")


def sbatch(args: list[str], cwd: Path = ROOT) -> str:
    out = subprocess.run(["sbatch", "--parsable", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return out.stdout.strip().split(";")[0]
