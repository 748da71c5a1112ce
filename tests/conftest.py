from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Small, fast settings for end-to-end runs on a 2-core CPU.
TINY = [
    "logger=csv", "trainer=cpu", "data.num_workers=0",
    "objective.decoder_dim=32", "objective.decoder_depth=1", "objective.decoder_heads=2",
    "backbone.name=vit_tiny_patch16_224", "+backbone.depth=2", "monitors.enabled=false",
]


def run_train(args: list[str], cwd: Path = ROOT, timeout: int = 600,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", PYTHONWARNINGS="ignore",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"), **(env or {}))
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def train():
    return run_train
