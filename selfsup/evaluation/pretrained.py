"""A pretrained run's parts: which checkpoint and folder a path names, and the weights of its backbone and objective
(the assembly layer, selfsup/assemble.py, rebuilds the modules from the run's config).

A run folder holds `config.yaml` (the resolved config) and `checkpoints/*.ckpt`; a checkpoint path may name
the folder (its newest loadable checkpoint is used) or one .ckpt file in it. Checkpoints are read as data only
(checkpoint_io.load_checkpoint, weights_only).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import DictConfig
from torch import nn

from selfsup import runs
from selfsup.checkpoint_io import newest_first
from selfsup.errors import ConfigError

PREFIX = "backbone."


@dataclass
class Pretrained:
    """What eval, embed and export need from a run."""

    backbone: nn.Module
    run_cfg: DictConfig
    checkpoint: Path
    run_dir: Path
    step: int

    def source(self) -> dict[str, Any]:
        """Which checkpoint and step a file written from this run (an export, its config) came from."""
        return {"checkpoint": str(self.checkpoint.resolve()), "step": self.step}


def resolve_checkpoint(path: str | Path | None) -> tuple[Path, Path]:
    """(checkpoint file, run folder) for a .ckpt file or a run folder (its newest checkpoint: eval, embed and export
    never quietly use an older one); a one-line ConfigError when missing. Loading verifies it."""
    run_dir = runs.run_folder(path)
    p = Path(str(path)).expanduser()
    if p.is_dir():
        found = newest_first(runs.checkpoint_dir(run_dir))
        if not found:
            raise ConfigError(f"checkpoint={path}: no checkpoint in {runs.checkpoint_dir(run_dir)}; "
                              "train first, or give a .ckpt file")
        return found[0], run_dir
    return p, run_dir


def backbone_state(checkpoint: dict[str, Any], source: Path) -> dict[str, Any]:
    """The `backbone.*` weights of a Lightning checkpoint, without the prefix."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise ConfigError(f"{source} is not a training checkpoint (no state_dict); give one from RUN/checkpoints/")
    weights = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    if not weights:
        raise ConfigError(f"{source} holds no backbone weights (no '{PREFIX}*' keys)")
    return weights


def objective_state(checkpoint: dict[str, Any]) -> dict[str, Any]:
    """The `objective.*` weights of a Lightning checkpoint (heads, a second tower), without the prefix."""
    prefix = "objective."
    return {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}


def load_weights(module: nn.Module, weights: dict[str, Any], ckpt_path: Path, run_dir: Path, what: str) -> None:
    missing, unexpected = module.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ConfigError(f"{ckpt_path} does not fit the {what} of {run_dir / runs.CONFIG} (missing "
                          f"{missing[:3]}, unexpected {unexpected[:3]}); was the config edited after training?")
