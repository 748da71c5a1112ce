"""The run folder: one per run, holding its config, checkpoints, metrics CSV and pictures.

    RUN/config.yaml          the composed, resolved config
    RUN/checkpoints/         last.ckpt and periodic step_XXXXXXX.ckpt
    RUN/metrics.csv          every logged metric, one row per logging step
    RUN/pictures/            what the objective draws (MAE reconstructions)
    RUN/run_info.jsonl       one line per start: versions, git commit, host, command line
    RUN/tokenizer.json       text and image-text runs: the tokenizer they were trained with
    RUN/.hydra/              Hydra's own record of the command line
"""
from __future__ import annotations

import csv
import os
import json
import platform
import shutil
import subprocess
import sys
import time
from pathlib import Path

from selfsup.checkpoint_io import CheckpointError, load_checkpoint
from selfsup.errors import ConfigError

CHECKPOINTS = "checkpoints"
CONFIG = "config.yaml"
RUN_INFO = "run_info.jsonl"
# Config keys whose change would make a checkpoint mean something else: refused on resume.
IDENTITY_KEYS = ("backbone", "objective", "data._target_", "data.image_size", "data.channels")
METRICS = "metrics.csv"
TOKENIZER = "tokenizer.json"


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def run_dir_of(checkpoint: str | Path) -> Path:
    """The run folder a checkpoint file belongs to: RUN for RUN/checkpoints/x.ckpt, else the file's folder."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINTS else checkpoint.parent


def kept_tokenizer(run_dir: str | Path) -> Path | None:
    """RUN/tokenizer.json, where the run keeps the tokenizer it trained with: resume, eval, embed and export read
    the same token ids from it, whatever has happened to the tokenizer cache or the corpus since."""
    path = Path(run_dir) / TOKENIZER
    return path if path.is_file() else None


def newest_loadable(folder: Path) -> tuple[Path, int] | None:
    """The most recent checkpoint in `folder` that loads, with its global step; corrupt ones are named and skipped.

    Candidates are last.ckpt and the periodic step_*.ckpt, newest first by modification time.
    """
    candidates = sorted(folder.glob("*.ckpt"), key=lambda p: p.stat().st_mtime, reverse=True) if folder.is_dir() else []
    for path in candidates:
        try:
            return path, int(load_checkpoint(path)["global_step"])
        except (CheckpointError, KeyError, TypeError) as e:
            print(f"warning: skipping checkpoint {path}: {e}", file=sys.stderr)
    return None


def resolve_resume(resume: str | None, run_dir: str | Path) -> tuple[Path, int] | None:
    """The checkpoint to resume from and its step: `auto` = this run's newest loadable checkpoint, if any;
    a run folder (its newest loadable checkpoint); or a .ckpt file."""
    if not resume:
        return None
    if resume == "auto":
        return newest_loadable(checkpoint_dir(run_dir))
    path = Path(resume).expanduser()
    if path.is_dir():
        found = newest_loadable(checkpoint_dir(path))
        if found is None:
            raise ConfigError(f"resume={resume}: no loadable checkpoint in {checkpoint_dir(path)}")
        return found
    if not path.is_file():
        raise ConfigError(f"resume={resume}: no checkpoint at {path}; give a .ckpt file, a run folder, or 'auto'")
    return path, int(load_checkpoint(path)["global_step"])


def trim_metrics(run_dir: str | Path, last_step: int) -> int:
    """Drop metric rows logged after the checkpoint a run resumes from; they will be logged again.

    Returns the number of rows dropped. The file is rewritten beside itself and renamed into place.
    """
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return 0
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        fields, rows = reader.fieldnames or [], list(reader)
    keep = [r for r in rows if not r.get("step") or int(float(r["step"])) < last_step]
    if len(keep) == len(rows):
        return 0
    tmp = path.with_suffix(".csv.tmp")
    with tmp.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=fields)
        writer.writeheader()
        writer.writerows(keep)
    os.replace(tmp, path)
    return len(rows) - len(keep)


def prepare_run_dir(run_dir: Path, min_free_gb: float) -> None:
    """Fail before any heavy work when the run folder cannot be written or its disk is (nearly) full."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write_test.{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"run folder {run_dir} is not writable ({e.strerror}); choose another with run_dir=PATH") from None
    for stale in checkpoint_dir(run_dir).glob(".*.tmp"):  # left by a process killed mid-save
        stale.unlink()
    free_gb = shutil.disk_usage(run_dir).free / 2**30
    if free_gb < min_free_gb:
        raise ConfigError(f"only {free_gb:.2f} GiB free for run folder {run_dir} (min_free_gb={min_free_gb}); "
                          "free some space or choose another run_dir")


def _git_commit(repo: Path) -> str | None:
    try:
        commit = subprocess.run(["git", "rev-parse", "HEAD"], cwd=repo, capture_output=True, text=True, timeout=5)
        if commit.returncode:
            return None
        dirty = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], cwd=repo,
                               capture_output=True, text=True, timeout=5).stdout.strip()
        return commit.stdout.strip() + ("-dirty" if dirty else "")
    except (OSError, subprocess.TimeoutExpired):
        return None


def record_run_info(run_dir: Path, resumed_from: str | None = None) -> dict:
    """Append this start's facts to RUN/run_info.jsonl: what ran, from which code, on what."""
    import pytorch_lightning
    import timm
    import torch

    import selfsup

    source = Path(selfsup.__file__).resolve().parents[1]
    info = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(), "argv": sys.argv,
        "selfsup": selfsup.__version__, "git_commit": _git_commit(source) if (source / ".git").exists() else None,
        "python": platform.python_version(), "torch": torch.__version__, "lightning": pytorch_lightning.__version__,
        "timm": timm.__version__, "cuda": torch.version.cuda, "resumed_from": resumed_from,
    }
    with (run_dir / RUN_INFO).open("a") as f:
        f.write(json.dumps(info) + "\n")
    return info


def flatten(node: object, prefix: str = "") -> dict[str, object]:
    """A nested config as {'a.b.c': value}."""
    if isinstance(node, dict):
        out: dict[str, object] = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def check_resume_config(run_dir: Path, new: dict) -> None:
    """Refuse to resume with a config that changes the model or the objective; budgets may change."""
    path = run_dir / CONFIG
    if not path.is_file():
        return
    from omegaconf import OmegaConf

    old = flatten(OmegaConf.to_container(OmegaConf.load(path), resolve=False))
    new_flat = flatten(new)
    watched = lambda key: any(key == k or key.startswith(k + ".") for k in IDENTITY_KEYS)  # noqa: E731
    differing = sorted(k for k in set(old) | set(new_flat) if watched(k) and old.get(k) != new_flat.get(k))
    if differing:
        changes = ", ".join(f"{k}: {old.get(k)!r} -> {new_flat.get(k)!r}" for k in differing)
        raise ConfigError(f"refusing to resume {run_dir} with a different model or objective ({changes}); "
                          "resume with the run's own config, or start a new run_dir")
