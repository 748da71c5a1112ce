"""Shared by every test folder: the repository root, train.py in a subprocess, markers, session fixtures.

The folders mirror the package (objectives/, backbones/, data/, evaluation/, callbacks/, optim/; top-level modules at
the top) and e2e/ holds the runs of the command lines (train.py, eval.py, embed.py, compare.py, SLURM, fault
injection). Test files import from here (`from conftest import ROOT, run_train`), from helpers.py (builders several
folders share), and name classes of targets.py in `_target_`s. Basenames are unique across folders: there is no
__init__.py, and pytest's default import mode imports each test file by its basename.
"""
from __future__ import annotations

import contextlib
import io
import os
import runpy
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

HAS_TEXT = (ROOT / "selfsup" / "backbones" / "text_transformer.py").is_file()
needs_text = pytest.mark.skipif(not HAS_TEXT,
                                reason="the text backbone (selfsup/backbones/text_transformer.py) is not there yet")


def run_train(args: list[str], cwd: Path = ROOT, timeout: int = 600,
              env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, WANDB_MODE="offline", WANDB_SILENT="true", PYTHONWARNINGS="ignore",
               OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"), **(env or {}))
    return subprocess.run([sys.executable, str(ROOT / "train.py"), *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def train():
    return run_train


def run_train_in_process(args: list[str], cwd: Path = ROOT) -> subprocess.CompletedProcess:
    """The user's `python train.py ARGS`, run in this process (train.py as __main__, its exit code and output
    captured): for commands that stop before training, whose cost in a subprocess is mostly importing torch and
    Lightning again. Commands that train run in a subprocess (run_train), isolated."""
    stdout, stderr = io.StringIO(), io.StringIO()
    argv, cwd_before, code = sys.argv, os.getcwd(), 0
    sys.argv = [str(ROOT / "train.py"), *args]
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            runpy.run_path(str(ROOT / "train.py"), run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv
        os.chdir(cwd_before)
    return subprocess.CompletedProcess(sys.argv, code, stdout.getvalue(), stderr.getvalue())


@pytest.fixture
def train_until_error():
    return run_train_in_process


@pytest.fixture(scope="session")
def openclipart_cache(tmp_path_factory):
    """One prepared manifest and tokenizer for the session's runs (preparing reads 8,121 SVGs): shared by
    data/test_openclipart.py and e2e/test_clip_runs.py."""
    return tmp_path_factory.mktemp("openclipart")


@pytest.fixture(scope="session")
def trained_run(tmp_path_factory) -> Path:
    """A tiny MAE run on synthetic labelled data, with its online monitors: shared by the tests that evaluate,
    embed or export a run folder (read it, or copy it; write beside it only what the test removes again)."""
    run_dir = tmp_path_factory.mktemp("pretrain") / "mae"
    r = run_train(["objective=mae", "data=synthetic", "data.num_samples=256", "data.num_val_samples=64",
                   "data.batch_size=32", "trainer.max_steps=16", "trainer.log_every_n_steps=2",
                   "trainer.limit_val_batches=1", *TINY, "monitors.enabled=true", f"run_dir={run_dir}"])
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir


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
    ckpt_a, ckpt_b = (torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
                      for d in (a, b))
    assert ckpt_a["global_step"] == ckpt_b["global_step"] == global_step
    for name, tensor in ckpt_a["state_dict"].items():
        assert torch.equal(tensor, ckpt_b["state_dict"][name]), name
