"""The run folder: one per run, holding its config, checkpoints, metrics CSV and pictures.

    RUN/config.yaml          the composed, resolved config
    RUN/checkpoints/         last.ckpt and periodic step_XXXXXXX.ckpt
    RUN/metrics.csv          every logged metric, one row per logging step
    RUN/pictures/            what the objective draws (MAE reconstructions)
    RUN/run_info.jsonl       one line per start: config groups chosen, versions, git commit, host, command line
    RUN/tokenizer.json       text and image-text runs: the tokenizer they were trained with
"""
from __future__ import annotations

import csv
import os
import shutil
from pathlib import Path

from omegaconf import DictConfig, OmegaConf

from selfsup.errors import ConfigError, DataError
from selfsup.instantiate import load_trusted_config, upgrade_targets

CHECKPOINTS = "checkpoints"
CONFIG = "config.yaml"
RUN_INFO = "run_info.jsonl"
# Config keys whose change would make a checkpoint mean something else: refused on resume. Other changes (a
# mask ratio, a learning rate, a longer budget) are allowed and listed in one line.
IDENTITY_KEYS = ("backbone", "objective._target_", "data._target_", "data.image_size", "data.channels")
# Keys that name where and how this start runs, not what it trains: not listed as changes.
PLACE_KEYS = ("run_dir", "resume", "verbose")
METRICS = "metrics.csv"
TOKENIZER = "tokenizer.json"


def checkpoint_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / CHECKPOINTS


def run_dir_of(checkpoint: str | Path) -> Path:
    """The run folder a checkpoint file belongs to: RUN for RUN/checkpoints/x.ckpt, else the file's folder."""
    checkpoint = Path(checkpoint)
    return checkpoint.parent.parent if checkpoint.parent.name == CHECKPOINTS else checkpoint.parent


def run_folder(path: str | Path | None) -> Path:
    """The run folder that `checkpoint=PATH` names (the folder, its checkpoints/ folder, or a .ckpt file in it),
    found without reading any checkpoint; a one-line ConfigError when there is none or it has no config."""
    if path in (None, "", "???"):
        raise ConfigError("give checkpoint=PATH: a run folder (runs/<date>/<time>_<objective>) or a .ckpt file in it")
    p = Path(str(path)).expanduser()
    if p.is_dir():
        run_dir = p.parent if p.name == CHECKPOINTS else p
    elif p.is_file():
        run_dir = run_dir_of(p)
    else:
        raise ConfigError(f"checkpoint={path}: no such file or folder; give a run folder or a .ckpt file")
    if not (run_dir / CONFIG).is_file():
        raise ConfigError(f"no {CONFIG} in run folder {run_dir}: the checkpoint's run config is needed to rebuild "
                          f"its backbone; keep {p.name} inside its run folder (RUN/checkpoints/)")
    return run_dir


def trusted_config(run_dir: Path) -> DictConfig:
    """A run folder's config, checked (instantiate.load_trusted_config): the only way selfsup reads a config it
    will build from. The `callbacks` of training are left out: nothing is built from them later, and a run
    trained with a callback of one's own stays readable."""
    return load_trusted_config(run_dir / CONFIG, drop=("callbacks",))


def kept_tokenizer(run_dir: str | Path) -> Path | None:
    """RUN/tokenizer.json, where the run keeps the tokenizer it trained with: resume, eval, embed and export read
    the same token ids from it, whatever has happened to the tokenizer cache or the corpus since."""
    path = Path(run_dir) / TOKENIZER
    return path if path.is_file() else None


def trim_metrics(run_dir: str | Path, last_step: int) -> int:
    """Drop metric rows logged after the checkpoint a run resumes from; they will be logged again.

    Returns the number of rows dropped. The file is rewritten beside itself and renamed into place.
    """
    path = Path(run_dir) / METRICS
    if not path.is_file():
        return 0
    try:
        with path.open(newline="", encoding="utf-8") as f:
            reader = csv.DictReader(f)
            fields, rows = reader.fieldnames or [], list(reader)
    except (UnicodeDecodeError, csv.Error) as e:
        raise DataError(f"cannot read {path} ({type(e).__name__}); fix it or move it aside to resume") from None
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


def try_writing(run_dir: Path) -> None:
    """Create the run folder if needed and write (then remove) a file in it: a one-line ConfigError when it can't."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / f".write_test.{os.getpid()}"
        probe.write_bytes(b"ok")
        probe.unlink()
    except OSError as e:
        raise ConfigError(f"run folder {run_dir} is not writable ({e.strerror}); choose another with "
                          "run_dir=PATH") from None


def prepare_run_dir(run_dir: Path, min_free_gb: float) -> None:
    """Fail before any heavy work when the run folder cannot be written or its disk is (nearly) full."""
    try_writing(run_dir)
    for stale in checkpoint_dir(run_dir).glob(".*.tmp"):  # left by a process killed mid-save
        stale.unlink()
    free_gb = shutil.disk_usage(run_dir).free / 2**30
    if free_gb < min_free_gb:
        raise ConfigError(f"only {free_gb:.2f} GiB free for run folder {run_dir} (min_free_gb={min_free_gb}); "
                          "free some space or choose another run_dir")


def flatten(node: object, prefix: str = "") -> dict[str, object]:
    """A nested config as {'a.b.c': value}."""
    if isinstance(node, dict):
        out: dict[str, object] = {}
        for k, v in node.items():
            out.update(flatten(v, f"{prefix}{k}."))
        return out
    return {prefix[:-1]: node}


def check_resume_config(resumed_run: Path, new: dict) -> list[str]:
    """Refuse to resume a run with a config that changes its model or objective (IDENTITY_KEYS), naming the keys;
    returns the other keys that differ from the resumed run's own config, as 'key: old -> new'."""
    path = resumed_run / CONFIG
    if not path.is_file():
        return []
    old = flatten(upgrade_targets(OmegaConf.to_container(OmegaConf.load(path), resolve=False)))
    new_flat = flatten(new)
    moved = str(old.get("run_dir") or ""), str(new_flat.get("run_dir") or "")
    if all(moved):  # paths inside the run folder (checkpoints, pictures) follow it: not a change
        old = {k: moved[1] + v[len(moved[0]):] if isinstance(v, str) and v.startswith(moved[0]) else v
               for k, v in old.items()}
    within = lambda key, keys: any(key == k or key.startswith(k + ".") for k in keys)  # noqa: E731
    differing = sorted(k for k in set(old) | set(new_flat) if old.get(k) != new_flat.get(k) and
                       not within(k, PLACE_KEYS))
    changes = [f"{k}: {old.get(k)!r} -> {new_flat.get(k)!r}" for k in differing]
    refused = [change for k, change in zip(differing, changes) if within(k, IDENTITY_KEYS)]
    if refused:
        raise ConfigError(f"refusing to resume {resumed_run} with a different model or objective "
                          f"({', '.join(refused)}); resume with the run's own config, or start a new run_dir")
    return changes


def holds_a_run(run_dir: Path) -> bool:
    """Whether a folder already holds a run's metrics or checkpoints (a new start there would mix two runs)."""
    return (run_dir / METRICS).is_file() or any(checkpoint_dir(run_dir).glob("*.ckpt"))


def wandb_run_id(run_dir: Path) -> str | None:
    """The id of the newest wandb run in RUN/wandb (folders `run-DATE_TIME-ID`, `offline-run-DATE_TIME-ID`): a
    resumed run continues it, so that wandb shows one run per run folder."""
    folders = [p for p in (run_dir / "wandb").glob("*run-*-*") if p.is_dir()]
    if not folders:
        return None
    newest = max(folders, key=lambda p: p.name.split("run-", 1)[1])
    return newest.name.rsplit("-", 1)[1]
