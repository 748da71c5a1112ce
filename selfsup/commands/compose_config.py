"""The configs of eval.py and embed.py, composed with Hydra's compose API, and the checks that need no heavy import.

Light on purpose (Hydra and OmegaConf only): a wrong argument, or a run folder whose config names untrusted code,
is refused in about a second, before torch, Lightning and timm are imported.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from omegaconf import DictConfig, OmegaConf

from selfsup import runs
from selfsup.checks import GROUPS, check_command_line
from selfsup.config_check import check_config, composed
from selfsup.errors import ConfigError


def compose(config_dir: Path, name: str, argv: Sequence[str], groups: Sequence[str] = ()) -> DictConfig:
    """The config `name` composed with command-line overrides (Hydra's compose API: no output folder, no
    logging set-up), checked (config_check: names, misspelt keys, types, ranges, paths) in one-line ConfigErrors."""
    check_command_line(argv, config_dir, (*GROUPS, *groups))
    check_config(config_dir, name, argv, (*GROUPS, *groups))
    return composed(config_dir, name, argv)


def required(cfg: DictConfig, key: str, hint: str) -> Any:
    if OmegaConf.is_missing(cfg, key) or cfg.get(key) in (None, ""):
        raise ConfigError(f"give {key}=... ({hint})")
    return cfg[key]


def check_run_folder(cfg: DictConfig) -> None:
    """`checkpoint=` names a run folder whose config passes the trusted-target check (runs.trusted_config)."""
    runs.trusted_config(runs.run_folder(required(cfg, "checkpoint", "a run folder or a .ckpt file in one")))
