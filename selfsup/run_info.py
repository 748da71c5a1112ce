"""RUN/run_info.jsonl: one line per start of a run, with what ran, from which code and on what."""
from __future__ import annotations

import json
import platform
import subprocess
import sys
import time
from importlib.metadata import version as package_version
from pathlib import Path

import torch

import selfsup
from selfsup.runs import RUN_INFO


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


def record_run_info(run_dir: Path, resumed_from: str | None = None, choices: dict[str, str] | None = None) -> dict:
    """Append this start's facts to RUN/run_info.jsonl: what ran (the config groups chosen, the command line),
    from which code, on what."""
    source = Path(selfsup.__file__).resolve().parents[1]
    info = {
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(), "argv": sys.argv,
        "selfsup": selfsup.__version__, "git_commit": _git_commit(source) if (source / ".git").exists() else None,
        "python": platform.python_version(), "torch": torch.__version__,
        "lightning": package_version("pytorch-lightning"),
        "timm": package_version("timm"), "cuda": torch.version.cuda, "resumed_from": resumed_from,
        "choices": dict(choices or {}),
    }
    with (run_dir / RUN_INFO).open("a") as f:
        f.write(json.dumps(info) + "\n")
    return info
