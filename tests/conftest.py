from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]

# Small, fast settings for end-to-end runs on a 2-core CPU.
TINY = [
    "logger=csv", "trainer=cpu", "data.num_workers=0",
    "objective.decoder_dim=32", "objective.decoder_depth=1", "objective.decoder_heads=2",
    "backbone.name=vit_tiny_patch16_224", "+backbone.depth=2", "monitors.enabled=false",
]

# torch.compile's Inductor backend builds C++ kernels on the CPU.
needs_cxx = pytest.mark.skipif(not any(map(shutil.which, ("g++", "c++", "clang++"))),
                               reason="Inductor needs a C++ compiler on the CPU (apt-get install -y g++)")


def run_train(args: list[str], cwd: Path = ROOT, timeout: int = 600,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", PYTHONWARNINGS="ignore",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"), **(env or {}))
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def train():
    return run_train


def train_whole_and_resumed(train, args: list[str], tmp_path: Path, step: int) -> tuple[Path, Path]:
    """Run `args` whole into tmp_path/full, then again into tmp_path/resumed from full's step-`step` checkpoint,
    as if that run had stopped there. Returns both run folders."""
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    r = train([*args, f"run_dir={full}"])
    assert r.returncode == 0, r.stderr[-3000:]
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(full / "checkpoints" / f"step_{step:07d}.ckpt", resumed / "checkpoints" / "last.ckpt")
    r = train([*args, f"run_dir={resumed}", "resume=auto"])
    assert r.returncode == 0, r.stderr[-3000:]
    return full, resumed


def assert_same_last_checkpoint(a: Path, b: Path, global_step: int) -> None:
    """Two run folders end at the same step with bit-identical weights."""
    ckpt_a, ckpt_b = (torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True) for d in (a, b))
    assert ckpt_a["global_step"] == ckpt_b["global_step"] == global_step
    for name, tensor in ckpt_a["state_dict"].items():
        assert torch.equal(tensor, ckpt_b["state_dict"][name]), name
