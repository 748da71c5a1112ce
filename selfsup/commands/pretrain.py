"""What `python train.py` runs: check the config, prepare the run folder, assemble the run and train it."""
from __future__ import annotations

import os
import shutil
import warnings
from pathlib import Path

import pytorch_lightning as pl
from lightning_fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf, open_dict

from selfsup import runs
from selfsup.assemble import build_module, build_pieces, build_trainer, close_loggers, place_augmentation
from selfsup.checkpoint_io import last_good, resolve_resume
from selfsup.checks import check_modalities
from selfsup.console import note, quiet
from selfsup.data.tokenizer import Tokenized, save_atomic
from selfsup.errors import ConfigError, DataError, NonFiniteLoss, SelfsupError
from selfsup.module import PretrainModule
from selfsup.run_info import record_run_info
from selfsup.run_loggers import RunWandbLogger, backfill_wandb


def check_start(cfg: DictConfig, run_dir: Path, resume: tuple[Path, int] | None) -> None:
    """Before anything is built: a new start never mixes into a folder that holds a run, and a resumed run keeps
    its model and objective (its own saved config, also when it is another run's folder); other changed keys are
    listed in one line."""
    if resume is None and not cfg.resume and runs.holds_a_run(run_dir):
        raise ConfigError(f"run folder {run_dir} already holds a run (metrics or checkpoints); continue it with "
                          "resume=auto, or choose another run_dir")
    if resume is not None:
        resumed_run = runs.run_dir_of(resume[0])
        changes = runs.check_resume_config(resumed_run, OmegaConf.to_container(cfg, resolve=True))
        if changes:
            note(f"resuming {resumed_run} with {len(changes)} changed key(s): {'; '.join(changes)}")


def prepare(cfg: DictConfig, run_dir: Path, resume: tuple[Path, int] | None, names: dict[str, str]) -> None:
    """Rank zero: the run folder, its config.yaml and run_info.jsonl; nothing is written before the checks pass."""
    runs.prepare_run_dir(run_dir, cfg.min_free_gb)
    resolved = OmegaConf.to_container(cfg, resolve=True)
    if cfg.get("verbose"):
        print(OmegaConf.to_yaml(resolved))
    OmegaConf.save(resolved, run_dir / runs.CONFIG)
    record_run_info(run_dir, resumed_from=str(resume[0]) if resume else None, choices=names)


DIVERGED = 1e3  # a weight this large (trained weights stay near 1) means the model itself has diverged


def restart_advice(run_dir: Path, cfg: DictConfig) -> str:
    """What to do after a non-finite loss: the last checkpoint whose weights and optimizer state are finite, or,
    when even its weights have blown up, that the model diverged (resuming it would only repeat that)."""
    lr = OmegaConf.select(cfg, "optim.lr")
    rate = f"optim.lr (now {lr})" if lr is not None else f"optim.base_lr (now {OmegaConf.select(cfg, 'optim.base_lr')})"
    remedy = f"lower {rate}, set trainer.gradient_clip_val=1.0, or trainer.nonfinite=skip"
    good = last_good(runs.checkpoint_dir(run_dir))
    if good is None:
        return f"no finite checkpoint to restart from; {remedy} and start again"
    path, step, largest = good
    if largest > DIVERGED:
        return (f"the model diverged: its weights reach {largest:.3g} in its last finite checkpoint ({path}, step "
                f"{step}); resuming would repeat that; {remedy} and start again in a new run_dir")
    return f"last good checkpoint: {path} (step {step}); resume=auto repeats the same steps, so {remedy}"


def continue_logs(cfg: DictConfig, run_dir: Path, resume: tuple[Path, int] | None, trainer: pl.Trainer,
                  continues: bool) -> None:
    """Rank zero: each step once in the logs. Rows after the resumed checkpoint are dropped (they are logged
    again); with resume=auto and nothing to resume, the earlier attempt's rows are; an offline wandb run gets
    the rows a killed process had not handed to it."""
    if resume is None:
        dropped = runs.trim_metrics(run_dir, 0) if cfg.resume else 0
        if dropped:
            print(f"no checkpoint to resume from in {runs.checkpoint_dir(run_dir)}: starting again from step 0 "
                  f"({dropped} metric rows of the earlier attempt dropped)")
        return
    dropped = runs.trim_metrics(run_dir, resume[1])
    print(f"resuming from {resume[0]} (step {resume[1]}; {dropped} later metric rows dropped)")
    if continues and cfg.logger.wandb.mode == "offline":
        for logger in trainer.loggers:
            if isinstance(logger, RunWandbLogger):
                backfill_wandb(logger, run_dir, resume[1])


def explain(error: RuntimeError, resume: tuple[Path, int] | None) -> SelfsupError | None:
    """A one-line error for the RuntimeErrors a user can act on: a data loader worker that died, a checkpoint
    whose weights do not fit the model of this config."""
    text = str(error)
    if "DataLoader worker (pid" in text:  # "... exited unexpectedly", "... is killed by signal: Killed."
        what = next(line for line in text.splitlines() if "DataLoader worker (pid" in line).strip().rstrip(".")
        return DataError(f"a data loader worker died ({what}; the sample it was reading is not known): killed by a "
                         "signal, often the out-of-memory killer; checkpoints and metrics so far are kept: "
                         "resume=auto, with fewer data.num_workers or a smaller data.batch_size")
    if resume is not None and "Error(s) in loading state_dict" in text:
        detail = " ".join(text.split("\n", 1)[-1].split())[:300]
        return ConfigError(f"{resume[0]} does not fit the model this config builds ({detail}); resume with the run's "
                           "own config, or start a new run_dir")
    return None


def run(cfg: DictConfig, run_dir: Path, names: dict[str, str]) -> PretrainModule:
    """Check, build and train; returns the trained module. A run folder this start created is removed again when
    it fails before logging or saving anything (bad data found when opening it, say): no half-made folders."""
    fresh = not any(p.name != "train.log" for p in run_dir.iterdir()) if run_dir.is_dir() else True
    try:
        return build_and_train(cfg, run_dir, names)
    except SelfsupError:
        if fresh and rank_zero_only.rank == 0 and not runs.holds_a_run(run_dir):
            shutil.rmtree(run_dir, ignore_errors=True)
        raise


def build_and_train(cfg: DictConfig, run_dir: Path, names: dict[str, str]) -> PretrainModule:
    # Our data modules restore their position mid-epoch through state_dict (data/datamodule.py), which this
    # Lightning warning does not look for.
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
    quiet(bool(cfg.get("verbose")))
    check_modalities(cfg)
    with open_dict(cfg):
        cfg.run_dir = str(run_dir)  # the job's own folder (also in a sweep), where the callbacks write
    rank_zero = rank_zero_only.rank == 0  # from the launcher's environment, valid before DDP starts
    resume = resolve_resume(cfg.resume, run_dir)  # (checkpoint, step): the newest that loads
    check_start(cfg, run_dir, resume)
    if rank_zero:
        prepare(cfg, run_dir, resume, names)
    pl.seed_everything(cfg.seed, workers=True)
    place_augmentation(cfg.data, cfg.trainer.get("accelerator", "auto"))
    pieces = build_pieces(cfg, resumed_run=runs.run_dir_of(resume[0]) if resume is not None else None)
    if rank_zero and isinstance(pieces.data, Tokenized):
        save_atomic(pieces.data.tokenizer, run_dir / runs.TOKENIZER, replace=True)
    continues = resume is not None and runs.run_dir_of(resume[0]).resolve() == run_dir.resolve()
    wandb_id = runs.wandb_run_id(run_dir) if continues else None  # one wandb run per run folder
    trainer = build_trainer(cfg, run_dir, names, pieces.data, wandb_id)
    pieces.data.check_before_training(trainer.world_size)
    module = build_module(cfg, pieces, trainer)
    if rank_zero:
        continue_logs(cfg, run_dir, resume, trainer, continues)
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
        # The other processes say only the step: rank zero's launcher ends them as soon as it has the error.
        advice = restart_advice(run_dir, cfg) if rank_zero else "what to do next is in the first process's message"
        raise NonFiniteLoss(f"{e}; {advice}") from None
    except RuntimeError as e:
        explained = explain(e, resume)
        if explained is None:
            raise
        raise explained from None
    finally:
        close_loggers(trainer)
    return module
