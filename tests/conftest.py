"""Shared by every test folder: the repository root, commands run in this process or a subprocess, markers, fixtures.

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


def train_in_process(args: list[str], cwd: Path = ROOT, timeout: int = 600,
                     env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """run_train's `python train.py ARGS`, in this process (the environment run_train gives it; `timeout` is
    not enforced): a training run of the tests costs about as much as importing torch and Lightning again.
    Several processes (DDP launches the others from this one and joins them) still get a fresh one."""
    if any(a.startswith("trainer.strategy=ddp") for a in args):
        return run_train(args, cwd, timeout, env)
    return run_in_process(ROOT / "train.py", args, cwd, dict(WANDB_MODE="offline", WANDB_SILENT="true", **(env or {})))


@pytest.fixture
def train():
    """train.py with the test's arguments, in this process; run_train for a fresh process (DDP, kills, a
    process's own environment)."""
    return train_in_process


def run_in_process(script: Path, args: list[str], cwd: Path = ROOT,
                   env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """The user's `python SCRIPT ARGS`, run in this process (the script as __main__, with `env` added to the
    environment, its exit code and output captured): for commands whose cost in a subprocess would be mostly
    importing torch and Lightning again."""
    stdout, stderr = io.StringIO(), io.StringIO()
    argv, cwd_before, code = sys.argv, os.getcwd(), 0
    saved_env, deterministic, threads = dict(os.environ), torch.are_deterministic_algorithms_enabled(), \
        torch.get_num_threads()
    os.environ.update(env or {})
    sys.argv = [str(script), *args]
    os.chdir(cwd)
    try:
        with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
            runpy.run_path(str(script), run_name="__main__")
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    finally:  # what a run sets for its process (Lightning's seed variables, deterministic kernels) ends with it
        sys.argv = argv
        os.chdir(cwd_before)
        os.environ.clear()
        os.environ.update(saved_env)
        torch.use_deterministic_algorithms(deterministic)
        torch.set_num_threads(threads)
    return subprocess.CompletedProcess([str(script), *args], code, stdout.getvalue(), stderr.getvalue())


@pytest.fixture(scope="module")
def slurm():
    """The local SLURM cluster (slurm/local_cluster.sh), started for a module's tests and stopped after them.
    Skipped with the reason only where slurm-wlm is absent or we are not root; with SELFSUP_REQUIRE_SLURM=1 (CI)
    that is a failure."""
    from slurm_utils import slurm_unavailable_reason, start_cluster, stop_cluster

    reason = slurm_unavailable_reason()
    if reason:
        if os.environ.get("SELFSUP_REQUIRE_SLURM"):
            pytest.fail(reason)
        pytest.skip(reason)
    start_cluster()
    yield
    stop_cluster()


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
    r = train_in_process(["objective=mae", "data=synthetic", "data.num_samples=256", "data.num_val_samples=64",
                          "data.batch_size=32", "trainer.max_steps=16", "trainer.log_every_n_steps=2",
                          "trainer.limit_val_batches=1", *TINY, "monitors.enabled=true", f"run_dir={run_dir}"])
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir


def fresh_clone(folder: Path) -> Path:
    """The repository's files as a fresh clone has them: tracked and not ignored, nothing else (no runs/)."""
    files = subprocess.run(["git", "ls-files", "--cached", "--others", "--exclude-standard"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    clone = folder / "clone"
    for name in files:
        if (ROOT / name).is_file():
            (clone / name).parent.mkdir(parents=True, exist_ok=True)
            (clone / name).write_bytes((ROOT / name).read_bytes())
    return clone


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


def assert_same_losses_and_weights(single: Path, ddp: Path, steps: int) -> dict[str, torch.Tensor]:
    """A two-process run logged the one-process run's losses at each of `steps` steps and ended at its weights
    (to float32 rounding); returns the one-process run's final state dict."""
    import csv

    losses = [[float(row["train/loss"]) for row in csv.DictReader((d / "metrics.csv").open()) if row.get("train/loss")]
              for d in (single, ddp)]
    assert len(losses[0]) == steps
    torch.testing.assert_close(torch.tensor(losses[1]), torch.tensor(losses[0]), rtol=1e-5, atol=1e-6)
    a, b = (torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
            for d in (single, ddp))
    for name, tensor in a.items():
        torch.testing.assert_close(b[name], tensor, rtol=0, atol=5e-6, msg=name)
    return a


def assert_same_last_checkpoint(a: Path, b: Path, global_step: int) -> None:
    """Two run folders end at the same step with bit-identical weights."""
    ckpt_a, ckpt_b = (torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
                      for d in (a, b))
    assert ckpt_a["global_step"] == ckpt_b["global_step"] == global_step
    for name, tensor in ckpt_a["state_dict"].items():
        assert torch.equal(tensor, ckpt_b["state_dict"][name]), name
