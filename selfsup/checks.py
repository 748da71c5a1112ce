"""Checks that span several config groups, run before anything heavy is built.

Single-piece checks (mask ratio, patch size against image size, timm model names) live in the piece's
constructor; this module checks the pieces fit together and that the command line names real choices.
"""
from __future__ import annotations

import contextlib
import re
import subprocess
from pathlib import Path
from typing import Any, Callable, Sequence

from hydra.utils import get_class
from omegaconf import OmegaConf

from selfsup.errors import ConfigError
from selfsup.modalities import accepted, reads, without_text
from selfsup.runs import try_writing

GROUPS = ("backbone", "objective", "data", "trainer", "optim", "logger", "callbacks", "experiment")


def choices(config_dir: Path, group: str) -> list[str]:
    return sorted(p.stem for p in (config_dir / group).glob("*.yaml"))


def search_path(argv: Sequence[str]) -> list[Path] | None:
    """The config folders a `hydra.searchpath=[file://DIR,...]` override adds (a user's own objectives and
    backbones); None when it names a source that cannot be listed here (pkg://)."""
    folders: list[Path] = []
    for arg in argv:
        if arg.startswith("hydra.searchpath="):
            for entry in arg.split("=", 1)[1].strip("[]").split(","):
                entry = entry.strip().strip("'\"")
                if not entry.startswith("file://"):
                    return None
                folders.append(Path(entry[len("file://"):]))
    return folders


def check_command_line(argv: Sequence[str], config_dir: Path, groups: Sequence[str] = GROUPS) -> None:
    """An unknown `group=name` (or `group@package=name`) on the command line, named with the choices, before
    Hydra's longer error. Config folders added with hydra.searchpath count too."""
    extra = search_path(argv)
    if extra is None:
        return
    folders = [config_dir, *extra]
    for arg in argv:
        m = re.fullmatch(r"[+~]?(\w+)(?:@[\w.]+)?=([\w.,-]+)", arg)
        if not m or m.group(1) not in groups or m.group(2) == "null":
            continue
        group, name = m.groups()
        for option in name.split(","):  # multirun lists: objective=mae,simclr
            if not any((folder / group / f"{option}.yaml").is_file() for folder in folders):
                known = sorted({c for folder in folders for c in choices(folder, group)})
                raise ConfigError(f"unknown {group} '{option}'; choose one of: {', '.join(known)}")


def target_attr(node: Any, attr: str, default: Any = None) -> Any:
    """A class attribute of a config node's `_target_` class, read without building it."""
    target = node.get("_target_") if node is not None else None
    if not target:
        return default
    try:
        return getattr(get_class(target), attr, default)
    except Exception as e:  # an unimportable _target_ is itself a config error
        raise ConfigError(f"cannot import {target}: {e}") from e


def check_modalities(cfg: Any, read: Callable[[Any, str], Any] = target_attr) -> None:
    """The objective, the backbone and the data must agree on the modality (selfsup/modalities.py). `read(node,
    attr)`: a class attribute of a node's `_target_` (imported; config_check.declared reads it from source)."""
    wanted_data = accepted(read(cfg.objective, "modality"))
    # an objective may train a backbone of another modality than its data (image-text data, an image backbone)
    wanted_backbone = accepted(read(cfg.objective, "backbone_modality")) or wanted_data
    objective = str(cfg.objective.get("_target_", "")).rsplit(".", 1)[-1]
    have = {group: read(cfg[group], "modality") for group in ("backbone", "data")}
    for group, wanted in (("backbone", wanted_backbone), ("data", wanted_data)):
        if wanted and have[group] and not any(reads(w, have[group]) for w in wanted):
            names = " or ".join(wanted)
            raise ConfigError(
                f"objective {objective} needs {names} {group}, but the chosen {group} is {have[group]}; pick an "
                f"{names} {group} (or drop the {group}= override to use the objective's default)"
            )
    if have["backbone"] and have["data"] and not reads(have["backbone"], have["data"]):
        raise ConfigError(f"the chosen backbone takes {have['backbone']} input, but the data is {have['data']}; pick "
                          f"a {without_text(have['data'])} backbone for this data (or other data)")


def cluster_gpus() -> bool | None:
    """Whether any node of the SLURM cluster here has GPUs (a `gpu` generic resource); None without `sinfo`."""
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%G"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return None
    if out.returncode:
        return None
    return any("gpu" in line for line in out.stdout.splitlines())


def check_launcher(argv: Sequence[str], config_dir: Path) -> None:
    """hydra/launcher=slurm asks for GPUs (hydra.launcher.gpus_per_node, 1 by default): on a cluster without any,
    say which key to set before submitit fails with a traceback."""
    if "hydra/launcher=slurm" not in argv:
        return
    given = [a.split("=", 1)[1] for a in argv if a.startswith("hydra.launcher.gpus_per_node=")]
    default = OmegaConf.load(config_dir / "hydra" / "launcher" / "slurm.yaml").get("gpus_per_node", 0)
    try:
        gpus = int(given[-1]) if given else int(default or 0)
    except ValueError:
        raise ConfigError(f"hydra.launcher.gpus_per_node must be a whole number, got '{given[-1]}'") from None
    if gpus > 0 and cluster_gpus() is False:
        source = "hydra.launcher.gpus_per_node" if given else "the default of hydra.launcher.gpus_per_node"
        raise ConfigError(f"hydra/launcher=slurm asks for {gpus} GPU per node ({source}), but no node of this SLURM "
                          "cluster has GPUs (sinfo lists no gpu resource); set hydra.launcher.gpus_per_node=0 "
                          "trainer.accelerator=cpu")


def check_run_dir(path: Path) -> None:
    """A run folder that can be created and written, tried for real (what is missing is created, a file written),
    as the last check before Hydra creates it anyway. What was created is removed again only when the try
    fails: on success other processes of the same job may already be using the folder."""
    if path.exists() and not path.is_dir():
        raise ConfigError(f"run_dir={path} is a file, not a folder; choose another run_dir")
    existing = next(p for p in (path, *path.parents) if p.exists())
    if not existing.is_dir():
        raise ConfigError(f"run_dir={path}: {existing} is a file, not a folder; choose another run_dir")
    created = [p for p in (path, *path.parents) if not p.exists()]
    try:
        try_writing(path)
    except ConfigError:
        for folder in created:  # deepest first
            with contextlib.suppress(OSError):
                folder.rmdir()
        raise
