"""A pretrained backbone from a run: its config rebuilds the backbone, its checkpoint supplies the weights.

A run folder holds `config.yaml` (the resolved config) and `checkpoints/*.ckpt`; a checkpoint path may name
the folder (its newest loadable checkpoint is used) or one .ckpt file in it. Checkpoints are read as data only
(checkpoint_io.load_checkpoint, weights_only).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from selfsup import runs
from selfsup.checkpoint_io import load_checkpoint
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


def resolve_checkpoint(path: str | Path | None) -> tuple[Path, Path]:
    """(checkpoint file, run folder) for a .ckpt file or a run folder; a one-line ConfigError when missing."""
    if path in (None, "", "???"):
        raise ConfigError("give checkpoint=PATH: a run folder (runs/<date>/<time>_<objective>) or a .ckpt file in it")
    p = Path(str(path)).expanduser()
    if p.is_dir():
        run_dir = p.parent if p.name == runs.CHECKPOINTS else p
        found = runs.newest_loadable(runs.checkpoint_dir(run_dir))
        if found is None:
            raise ConfigError(f"checkpoint={path}: no loadable checkpoint in {runs.checkpoint_dir(run_dir)}; "
                              "train first, or give a .ckpt file")
        ckpt = found[0]
    elif p.is_file():
        ckpt, run_dir = p, runs.run_dir_of(p)
    else:
        raise ConfigError(f"checkpoint={path}: no such file or folder; give a run folder or a .ckpt file")
    if not (run_dir / runs.CONFIG).is_file():
        raise ConfigError(f"no {runs.CONFIG} in run folder {run_dir}: the checkpoint's run config is needed to "
                          f"rebuild its backbone; keep {ckpt.name} inside its run folder (RUN/checkpoints/)")
    return ckpt, run_dir


def load_run_config(run_dir: Path) -> DictConfig:
    return OmegaConf.load(run_dir / runs.CONFIG)


def backbone_state(checkpoint: dict[str, Any], source: Path) -> dict[str, Any]:
    """The `backbone.*` weights of a Lightning checkpoint, without the prefix."""
    state = checkpoint.get("state_dict")
    if not isinstance(state, dict):
        raise ConfigError(f"{source} is not a training checkpoint (no state_dict); give one from RUN/checkpoints/")
    weights = {k[len(PREFIX):]: v for k, v in state.items() if k.startswith(PREFIX)}
    if not weights:
        raise ConfigError(f"{source} holds no backbone weights (no '{PREFIX}*' keys)")
    return weights


def build_backbone(run_cfg: DictConfig) -> nn.Module:
    from selfsup.train import build

    return build(run_cfg.backbone)


def load_weights(module: nn.Module, weights: dict[str, Any], ckpt_path: Path, run_dir: Path, what: str) -> None:
    missing, unexpected = module.load_state_dict(weights, strict=False)
    if missing or unexpected:
        raise ConfigError(f"{ckpt_path} does not fit the {what} of {run_dir / runs.CONFIG} (missing "
                          f"{missing[:3]}, unexpected {unexpected[:3]}); was the config edited after training?")


def load_pretrained(path: str | Path | None, dual_encoder: bool = False, random_init: bool = False,
                    seed: int = 0) -> Pretrained:
    """Rebuild the run's backbone from its config.yaml and load the checkpoint's backbone weights (strictly).

    `dual_encoder`: a CLIP run's backbone with its objective (text tower, projections, temperature) as one
    DualEncoder, for zero-shot and retrieval; a run of another objective is a ConfigError.
    `random_init`: the same architecture at its random initialisation (seeded), no weights loaded: the
    floor that pretraining must beat, measured by the same protocol on the same data.
    """
    ckpt_path, run_dir = resolve_checkpoint(path)
    run_cfg = load_run_config(run_dir)
    checkpoint = {} if random_init else load_checkpoint(ckpt_path)
    if random_init:
        torch.manual_seed(seed)
    model = build_backbone(run_cfg)
    if not random_init:
        load_weights(model, backbone_state(checkpoint, ckpt_path), ckpt_path, run_dir, "backbone")
    if dual_encoder:
        from selfsup.objectives.clip import CLIP, DualEncoder
        from selfsup.train import build

        objective = build(run_cfg.objective, backbone=model, _convert_="all")
        if not isinstance(objective, CLIP):
            raise ConfigError(f"{run_dir} was trained with {type(objective).__name__}, which has no text tower; "
                              "zero-shot and retrieval evaluate CLIP runs")
        if not random_init:
            prefix = "objective."
            weights = {k[len(prefix):]: v for k, v in checkpoint["state_dict"].items() if k.startswith(prefix)}
            load_weights(objective, weights, ckpt_path, run_dir, "objective")
        model = DualEncoder(model, objective)
    return Pretrained(model.eval(), run_cfg, ckpt_path, run_dir, int(checkpoint.get("global_step", 0)))
