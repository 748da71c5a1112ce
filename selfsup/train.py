"""Build a run from a composed config and train it: what `python train.py` calls."""
from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from hydra.utils import instantiate
from lightning_fabric.utilities.rank_zero import rank_zero_only
from omegaconf import DictConfig, OmegaConf

from selfsup import runs
from selfsup.callbacks.checkpoint import RunCheckpoint
from selfsup.callbacks.online_monitors import build_monitors
from selfsup.callbacks.pictures import Pictures
from selfsup.callbacks.preemption import Preemption
from selfsup.callbacks.progress import ProgressBar
from selfsup.callbacks.throughput import Throughput
from selfsup.checks import check_modalities
from selfsup.csv_logger import RunCSVLogger
from selfsup.data.tokenizer import Tokenized, check_resumed_tokenizer, save_atomic
from selfsup.checkpoint_io import AtomicCheckpointIO
from selfsup.errors import ConfigError, NonFiniteLoss, SelfsupError
from selfsup.module import OptimConfig, PretrainModule


def build(node: DictConfig, **kwargs: Any) -> Any:
    """hydra.utils.instantiate, re-raising a user error from the constructor as itself (Hydra wraps it)."""
    try:
        return instantiate(node, **kwargs)
    except InstantiationException as e:
        cause = e.__cause__
        while cause is not None and not isinstance(cause, SelfsupError):
            cause = cause.__cause__
        if cause is not None:
            raise cause from None
        raise


def trains_on_gpu(accelerator: str) -> bool:
    """Whether the trainer's `accelerator` (auto, gpu, cuda, cpu) puts training on a CUDA GPU here."""
    return accelerator in ("auto", "gpu", "cuda") and torch.cuda.is_available()


def resolve_precision(precision: str, accelerator: str = "auto") -> str:
    """`auto`: bf16 mixed precision on CUDA GPUs with bf16, full fp32 elsewhere (also with trainer=cpu on a
    GPU machine)."""
    if precision != "auto":
        return precision
    if trains_on_gpu(accelerator) and torch.cuda.is_bf16_supported():
        return "bf16-mixed"
    return "32-true"


def resolve_sync_batchnorm(value: bool | str, accelerator: str) -> bool:
    """`auto`: SyncBatchNorm on GPUs (Lightning applies it only with several processes); never on CPU,
    where torch's SyncBatchNorm cannot run."""
    if value != "auto":
        return bool(value)
    return trains_on_gpu(accelerator)


def place_augmentation(data_cfg: DictConfig, accelerator: str) -> None:
    """data.augment_on `auto` means the GPU where there is one; training on the CPU of a GPU machine makes the
    views in the data workers instead."""
    if data_cfg.get("augment_on") == "auto" and not trains_on_gpu(accelerator):
        data_cfg.augment_on = "cpu"


def cluster_plugins() -> list[Any]:
    """Under SLURM, Lightning's SLURM environment does the rendezvous; preemption is ours (callbacks/preemption.py)."""
    from lightning_fabric.plugins.environments import SLURMEnvironment

    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


def build_loggers(cfg: DictConfig, run_dir: Path, names: dict[str, str]) -> list[Any]:
    loggers: list[Any] = []
    if cfg.logger.csv:
        loggers.append(RunCSVLogger(str(run_dir)))
    wb = cfg.logger.wandb
    if wb.mode != "disabled":
        from pytorch_lightning.loggers import WandbLogger

        tags = list(wb.tags or []) + [f"{k}:{v}" for k, v in names.items() if k != "sweep"]
        group = wb.group or names.get("sweep") or names["objective"]  # a sweep's runs share one group
        loggers.append(WandbLogger(project=wb.project, group=group, tags=tags,
                                   mode=wb.mode, save_dir=str(run_dir), name=run_dir.name,
                                   config=OmegaConf.to_container(cfg, resolve=True)))
    if cfg.logger.tensorboard:
        from pytorch_lightning.loggers import TensorBoardLogger

        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=""))
    return loggers


def build_callbacks(cfg: DictConfig, run_dir: Path, data: Any = None) -> list[pl.Callback]:
    from pytorch_lightning.callbacks import LearningRateMonitor

    ck = cfg.checkpoint
    periodic = RunCheckpoint(dirpath=runs.checkpoint_dir(run_dir), filename="step_{step:07d}",
                               auto_insert_metric_name=False, every_n_train_steps=ck.every_n_steps or None,
                               every_n_epochs=None if ck.every_n_steps else ck.every_n_epochs,
                               save_top_k=-1, save_last=True, enable_version_counter=False)
    log_every = cfg.trainer.log_every_n_steps
    return [
        periodic,
        Preemption(periodic, requeue=cfg.preemption.requeue,
                   check_every_n_steps=cfg.preemption.check_every_n_steps),
        Throughput(every_n_steps=log_every),
        Pictures(run_dir / "pictures", every_n_epochs=cfg.pictures_every_n_epochs),
        LearningRateMonitor(logging_interval="step"),
        ProgressBar(refresh_rate=log_every),
        *build_monitors(cfg.get("monitors"), data, cfg.seed),  # online kNN and linear probe, where the data has labels
    ]


def budget(trainer_cfg: DictConfig, steps_per_epoch: int) -> int:
    """Total optimizer steps of the run: max_steps when set, else max_epochs x steps per epoch."""
    if trainer_cfg.max_steps and trainer_cfg.max_steps > 0:
        return int(trainer_cfg.max_steps)
    if trainer_cfg.max_epochs and trainer_cfg.max_epochs > 0:
        return int(trainer_cfg.max_epochs) * steps_per_epoch
    raise ConfigError("set trainer.max_steps or trainer.max_epochs to a positive number")


def run(cfg: DictConfig, run_dir: Path, names: dict[str, str]) -> PretrainModule:
    """Check, build and train; returns the trained module."""
    # Our data modules restore their position mid-epoch through state_dict (data/base.py), which this
    # Lightning warning does not look for.
    warnings.filterwarnings("ignore", message="You're resuming from a checkpoint that ended before the epoch ended")
    check_modalities(cfg)
    rank_zero = rank_zero_only.rank == 0  # from the launcher's environment, valid before DDP starts
    resume = runs.resolve_resume(cfg.resume, run_dir)  # (checkpoint, step): the newest that loads
    if rank_zero:
        runs.prepare_run_dir(run_dir, cfg.min_free_gb)
        resolved = OmegaConf.to_container(cfg, resolve=True)
        if resume is not None:
            runs.check_resume_config(run_dir, resolved)
        print(OmegaConf.to_yaml(resolved))
        OmegaConf.save(resolved, run_dir / runs.CONFIG)
        runs.record_run_info(run_dir, resumed_from=str(resume[0]) if resume else None)
    pl.seed_everything(cfg.seed, workers=True)

    accelerator = cfg.trainer.get("accelerator", "auto")
    place_augmentation(cfg.data, accelerator)
    kept = runs.kept_tokenizer(runs.run_dir_of(resume[0])) if resume is not None else None
    named_tokenizer = OmegaConf.select(cfg, "data.tokenizer.path")
    if kept is not None and OmegaConf.select(cfg, "data.tokenizer") is not None and not named_tokenizer:
        cfg.data.tokenizer.path = str(kept)  # a resumed run reads the tokenizer it was trained with, not the cache
    backbone = build(cfg.backbone)
    objective = build(cfg.objective, backbone=backbone, _convert_="all")
    data = build(cfg.data, views=objective.views, seed=cfg.seed, _convert_="all")
    if cfg.compile:
        data.compile_views()
    if hasattr(objective, "bind_data"):  # e.g. MLM takes its token ids from the data module's tokenizer
        objective.bind_data(data)
    if isinstance(data, Tokenized):
        if kept is not None and named_tokenizer:  # on every process, so that all stop alike
            check_resumed_tokenizer(data.tokenizer, kept)
        if rank_zero:
            save_atomic(data.tokenizer, run_dir / runs.TOKENIZER, replace=True)
    trainer_kwargs = OmegaConf.to_container(cfg.trainer, resolve=True)
    trainer_kwargs["precision"] = resolve_precision(trainer_kwargs.get("precision", "auto"), accelerator)
    trainer_kwargs["sync_batchnorm"] = resolve_sync_batchnorm(trainer_kwargs.get("sync_batchnorm", "auto"), accelerator)
    if trainer_kwargs.get("benchmark") is None:  # cuDNN autotuning (fixed input sizes), unless deterministic
        trainer_kwargs["benchmark"] = not trainer_kwargs.get("deterministic")
    nonfinite = trainer_kwargs.pop("nonfinite", "stop")
    max_consecutive_skips = trainer_kwargs.pop("nonfinite_max_consecutive_skips", 10)
    trainer = pl.Trainer(
        **trainer_kwargs,
        default_root_dir=str(run_dir),
        logger=build_loggers(cfg, run_dir, names),
        callbacks=build_callbacks(cfg, run_dir, data),
        use_distributed_sampler=False,  # our EpochSampler shards by rank itself (see data/sampling.py)
        plugins=[AtomicCheckpointIO(), *cluster_plugins()],
    )
    data.check_before_training(trainer.world_size)

    per_step = data.batch_size * trainer.world_size
    global_batch = per_step * trainer.accumulate_grad_batches
    steps_per_epoch = max(1, data.num_train_samples() // per_step // trainer.accumulate_grad_batches)
    total_steps = budget(cfg.trainer, steps_per_epoch)
    optim = OptimConfig.from_cfg(OmegaConf.to_container(cfg.optim, resolve=True), global_batch, steps_per_epoch,
                                 total_steps)
    module = PretrainModule(backbone, objective, optim, compile=cfg.compile, nonfinite=nonfinite,
                            max_consecutive_skips=max_consecutive_skips)

    if resume is not None:
        dropped = runs.trim_metrics(run_dir, resume[1]) if rank_zero else 0
        print(f"resuming from {resume[0]} (step {resume[1]}; {dropped} later metric rows dropped)")

    print(f"global batch {global_batch}, lr {optim.lr:.3g}, {total_steps} steps "
          f"({steps_per_epoch} per epoch, {optim.warmup_steps} warm-up), precision {trainer_kwargs['precision']}")
    if trainer.world_size > 1 or os.environ.get("SLURM_JOB_ID"):
        print(f"process {rank_zero_only.rank} of world size {trainer.world_size}", flush=True)
    try:
        trainer.fit(module, datamodule=data, ckpt_path=str(resume[0]) if resume else None)
    except NonFiniteLoss as e:
        last = runs.newest_loadable(runs.checkpoint_dir(run_dir))
        where = f"last good checkpoint: {last[0]} (step {last[1]}); resume with resume=auto" if last else "no checkpoint yet"
        raise NonFiniteLoss(f"{e}; {where}") from None
    return module
