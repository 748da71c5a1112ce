"""What `python train.py` runs: check the config, prepare the run folder, assemble the run and train it."""
from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytorch_lightning as pl
from lightning_fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from selfsup import runs
from selfsup.assemble import build_module, build_pieces, build_trainer, close_loggers, place_augmentation
from selfsup.checkpoint_io import newest_loadable, resolve_resume
from selfsup.checks import check_modalities
from selfsup.console import quiet
from selfsup.data.tokenizer import Tokenized, save_atomic
from selfsup.errors import NonFiniteLoss
from selfsup.module import PretrainModule
from selfsup.run_info import record_run_info


def prepare(cfg: DictConfig, run_dir: Path, resume: tuple[Path, int] | None, names: dict[str, str]) -> None:
    """Rank zero: the run folder, its config.yaml (checked against the resumed run's) and run_info.jsonl; nothing
    is written before the checks pass."""
    runs.prepare_run_dir(run_dir, cfg.min_free_gb)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if resume is not None:
        runs.check_resume_config(run_dir, resolved)
    if cfg.get("verbose"):
        print(OmegaConf.to_yaml(resolved))
    OmegaConf.save(resolved, run_dir / runs.CONFIG)
    record_run_info(run_dir, resumed_from=str(resume[0]) if resume else None, choices=names)


def run(cfg: DictConfig, run_dir: Path, names: dict[str, str]) -> PretrainModule:
    """Check, build and train; returns the trained module."""
    # Our data modules restore their position mid-epoch through state_dict (data/datamodule.py), which this
    # Lightning warning does not look for.
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
    quiet(bool(cfg.get("verbose")))
    check_modalities(cfg)
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)  # the job's own folder (also in a sweep), where the callbacks write
    rank_zero = rank_zero_only.rank == 0  # from the launcher's environment, valid before DDP starts
    resume = resolve_resume(cfg.resume, run_dir)  # (checkpoint, step): the newest that loads
    if rank_zero:
        prepare(cfg, run_dir, resume, names)
    pl.seed_everything(cfg.seed, workers=True)
    place_augmentation(cfg.data, cfg.trainer.get("accelerator", "auto"))
    pieces = build_pieces(cfg, resumed_run=runs.run_dir_of(resume[0]) if resume is not None else None)
    if rank_zero and isinstance(pieces.data, Tokenized):
        save_atomic(pieces.data.tokenizer, run_dir / runs.TOKENIZER, replace=True)
    trainer = build_trainer(cfg, run_dir, names, pieces.data)
    pieces.data.check_before_training(trainer.world_size)
    module = build_module(cfg, pieces, trainer)
    if resume is not None:
        dropped = runs.trim_metrics(run_dir, resume[1]) if rank_zero else 0
        print(f"resuming from {resume[0]} (step {resume[1]}; {dropped} later metric rows dropped)")
    o = module.optim
    what = ", ".join(f"{group} {names[group]}" for group in ("objective", "backbone", "data") if names.get(group))
    print(f"{what}; global batch {pieces.data.batch_size * trainer.world_size * trainer.accumulate_grad_batches}, "
          f"lr {o.lr:.3g}, {o.total_steps} steps ({o.warmup_steps} warm-up), precision {trainer.precision}; run "
          f"folder {run_dir}", flush=True)
    if trainer.world_size > 1 or os.environ.get("SLURM_JOB_ID"):
        print(f"process {rank_zero_only.rank} of world size {trainer.world_size}", flush=True)
    try:
        trainer.fit(module, datamodule=pieces.data, ckpt_path=str(resume[0]) if resume else None)
        for callback in trainer.callbacks:  # e.g. preemption outside SLURM: saved, but not finished
            if getattr(callback, "stopped", None) is not None:
                raise callback.stopped
    except NonFiniteLoss as e:
        last = newest_loadable(runs.checkpoint_dir(run_dir))
        where = "no checkpoint yet"
        if last:
            where = f"last good checkpoint: {last[0]} (step {last[1]}); resume with resume=auto"
        raise NonFiniteLoss(f"{e}; {where}") from None
    finally:
        close_loggers(trainer)
    return module
