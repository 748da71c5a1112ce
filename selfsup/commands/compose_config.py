"""The configs of eval.py and embed.py, composed with Hydra's compose API, and the checks that need no heavy import.

Light on purpose (Hydra and OmegaConf only): a wrong argument, or a run folder whose config names untrusted code,
is refused in about a second, before torch, Lightning and timm are imported.
"""
from __future__ import annotations

from pathlib import Path
from typing import Any, Sequence

from hydra import compose as hydra_compose
from hydra import initialize_config_dir
from hydra.errors import HydraException
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from selfsup import runs
from selfsup.checks import GROUPS, check_command_line
from selfsup.errors import ConfigError


def compose(config_dir: Path, name: str, argv: Sequence[str], groups: Sequence[str] = ()) -> DictConfig:
    """The config `name` composed with command-line overrides (Hydra's compose API: no output folder, no
    logging set-up), with unknown group choices and Hydra's own errors as one-line ConfigErrors."""
    check_command_line(argv, config_dir, (*GROUPS, *groups))
    try:
        with initialize_config_dir(config_dir=str(config_dir), version_base="1.3"):
            return hydra_compose(config_name=name, overrides=list(argv))
    except (HydraException, OmegaConfBaseException) as e:
        lines = [line.strip() for line in str(e).splitlines() if line.strip()]
        raise ConfigError(" ".join(lines[:2])) from None  # e.g. "Could not override 'x'. To append ... use +x=1"


def required(cfg: DictConfig, key: str, hint: str) -> Any:
    if OmegaConf.is_missing(cfg, key) or cfg.get(key) in (None, ""):
        raise ConfigError(f"give {key}=... ({hint})")
    return cfg[key]


def check_run_folder(cfg: DictConfig) -> None:
    """`checkpoint=` names a run folder whose config passes the trusted-target check (runs.trusted_config)."""
    runs.trusted_config(runs.run_folder(required(cfg, "checkpoint", "a run folder or a .ckpt file in one")))
