"""The one place where configs become a run: the pieces (backbone, objective, data), the trainer's parts
(precision, SyncBatchNorm, cluster plugins, loggers, callbacks, monitors, budget), the module, and, for evaluation,
a pretrained run rebuilt from its folder (through runs.trusted_config: a run folder is data).

Everything is built through `instantiate.build`; the entry points (selfsup/commands/) call this module and
nothing below it builds from a config.
"""
from __future__ import annotations

import difflib
import inspect
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from hydra.errors import InstantiationException
from lightning_fabric.plugins.environments import SLURMEnvironment
from omegaconf import DictConfig, OmegaConf
from pytorch_lightning.loggers import TensorBoardLogger, WandbLogger
from safetensors.torch import load_file

from selfsup import runs
from selfsup.callbacks.online_monitors import EvalFeatures
from selfsup.checkpoint_io import AtomicCheckpointIO, CheckpointError, load_training_checkpoint
from selfsup.checks import target_attr
from selfsup.console import note
from selfsup.data.augment import resolve_view_sizes
from selfsup.data.image_text import Captions
from selfsup.data.tokenizer import Tokenized, check_resumed_tokenizer, resolve_tokenizer, tokenizer_settings
from selfsup.errors import ConfigError, SelfsupError, one_line
from selfsup.evaluation.data import check_labelled, eval_data_node
from selfsup.evaluation.export_formats import CONFIG as EXPORT_CONFIG
from selfsup.evaluation.export_formats import WEIGHTS as EXPORT_WEIGHTS
from selfsup.evaluation.pretrained import Pretrained, backbone_state, load_weights, objective_state, resolve_checkpoint
from selfsup.evaluation.protocol import EVAL_VIEWS, Protocol
from selfsup.evaluation.zero_shot import class_names_of
from selfsup.instantiate import build, trusted_node
from selfsup.modalities import PAIRED_MODALITIES, accepted, reads, without_text
from selfsup.module import PretrainModule
from selfsup.objectives.base import Objective
from selfsup.optim import OptimConfig
from selfsup.run_loggers import RunCSVLogger, RunWandbLogger


# -- where training runs ------------------------------------------------------------------------------------------
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
    views in the data workers instead. An explicit `gpu` without one stands (the device path, run on the CPU),
    with a note saying so."""
    if data_cfg.get("augment_on") == "auto" and not trains_on_gpu(accelerator):
        data_cfg.augment_on = "cpu"
    elif data_cfg.get("augment_on") == "gpu" and not trains_on_gpu(accelerator):
        note("data.augment_on=gpu, but training runs on the CPU: the views are made in the training process after "
             "each batch is loaded, not in the data workers (data.augment_on=cpu makes them there)")


def cluster_plugins() -> list[Any]:
    """Under SLURM, Lightning's SLURM environment does the rendezvous; preemption is ours (callbacks/preemption.py)."""
    return [SLURMEnvironment(auto_requeue=False)] if SLURMEnvironment.detect() else []


# -- the pieces ---------------------------------------------------------------------------------------------------
@dataclass
class Pieces:
    backbone: torch.nn.Module
    objective: Objective
    data: Any  # a KeyedDataModule built with the objective's views


def build_pieces(cfg: DictConfig, resumed_run: Path | None = None, bind: bool = True) -> Pieces:
    """Backbone, objective (with its data facts bound) and data module of a composed training config.

    `resumed_run`: the folder of the run being resumed; its kept tokenizer (RUN/tokenizer.json) is used unless
    the command line names one, which must then tokenize alike. `bind=False` leaves the objective unbound (the
    benchmark feeds synthetic batches in the default token layout, and needs no corpus).
    """
    kept = runs.kept_tokenizer(resumed_run) if resumed_run is not None else None
    named_tokenizer = OmegaConf.select(cfg, "data.tokenizer.path")
    if kept is not None and OmegaConf.select(cfg, "data.tokenizer") is not None and not named_tokenizer:
        cfg.data.tokenizer.path = str(kept)  # a resumed run reads the tokenizer it was trained with, not the cache
    backbone = build(cfg.backbone)
    objective = build(cfg.objective, backbone=backbone)
    resolve_view_sizes(objective.views, OmegaConf.select(cfg, "data.image_size"), getattr(backbone, "patch_size", 1))
    data = build(cfg.data, views=objective.views, seed=cfg.seed)
    if cfg.get("compile"):
        data.compile_views()
    if bind:
        objective.bind_data(data.facts())
    if kept is not None and named_tokenizer and isinstance(data, Tokenized):  # on every process: all stop alike
        check_resumed_tokenizer(data.tokenizer, kept)
    return Pieces(backbone, objective, data)


# -- the trainer --------------------------------------------------------------------------------------------------
def build_loggers(cfg: DictConfig, run_dir: Path, names: dict[str, str], wandb_id: str | None = None) -> list[Any]:
    """CSV, wandb and TensorBoard as the config asks; `wandb_id`: the wandb run a resumed run continues."""
    loggers: list[Any] = []
    if cfg.logger.csv:
        loggers.append(RunCSVLogger(str(run_dir)))
    wb = cfg.logger.wandb
    if wb.mode != "disabled":
        tags = list(wb.tags or []) + [f"{k}:{v}" for k, v in names.items() if k != "sweep"]
        group = wb.group or names.get("sweep") or names["objective"]  # a sweep's runs share one group
        loggers.append(RunWandbLogger(project=wb.project, group=group, tags=tags,
                                   mode=wb.mode, save_dir=str(run_dir), name=run_dir.name, id=wandb_id,
                                   resume="allow" if wandb_id else None,
                                   config=OmegaConf.to_container(cfg, resolve=True)))
    if cfg.logger.tensorboard:
        loggers.append(TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version=""))
    return loggers


def close_loggers(trainer: pl.Trainer) -> None:
    """End the wandb run of this job: jobs of a sweep that share a process (Hydra's basic launcher runs them one
    after another) would otherwise all log into the first job's run."""
    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger) and logger._experiment is not None:
            logger._experiment.finish()
            logger._experiment = None


def zero_shot_data(node: Any, train_data: Any, seed: int) -> Any:
    """monitors.zero_shot.data built for the run: labelled images (or sounds) with the run's input settings (image
    size, channels and normalisation; sample rate, clip length and spectrogram: what the tower expects) and, where
    it has captions, the run's tokenizer; checked before training starts."""
    what = "monitors.zero_shot.data"
    node = OmegaConf.create(OmegaConf.to_container(node, resolve=True))
    media = without_text(train_data.modality)
    if not reads(media, target_attr(node, "modality", "image")):
        raise ConfigError(f"{what} must be labelled {media} data, got {node._target_}; e.g. "
                          f"data@{what}={media}_folder {what}.root=DIR")
    for key, value in train_data.input_settings().items():
        node[key] = value
    if node.get("tokenizer") is not None:  # captions of its own: tokenized as the run's
        train_data.tokenizer_info  # resolves the run's tokenizer, if it is not yet
        node.tokenizer.path = str(train_data.tokenizer_path)
    data = build(node, views=EVAL_VIEWS, seed=seed)
    data.setup()
    check_labelled(data, what)
    class_names_of(data, what)
    return data


def build_monitors(cfg: Any, data: Any, seed: int = 0) -> list[pl.Callback]:
    """The monitors of `cfg.monitors` for this data module: none when disabled, or (`enabled: auto`) when the
    data has no labels; `enabled: true` on unlabelled data is an error."""
    if cfg is None or data is None:
        return []
    enabled = cfg.get("enabled", "auto")
    if enabled not in ("auto", True, False):
        raise ConfigError(f"monitors.enabled must be auto, true or false, got '{enabled}'")
    if enabled is False:
        return []
    monitors: list[pl.Callback] = []
    zero_shot = cfg.get("zero_shot")
    if data.modality in PAIRED_MODALITIES and zero_shot is not None:  # needs captions, not labels
        labelled = zero_shot_data(zero_shot.data, data, seed) if zero_shot.get("data") is not None else None
        settings = {key: value for key, value in zero_shot.items() if key != "data"}
        monitors.append(build(OmegaConf.create(settings), max_val_samples=cfg.get("max_val_samples", "auto"),
                              batch_size=cfg.get("batch_size"), data=labelled))
    features = EvalFeatures(cfg.get("max_train_samples", "auto"), cfg.get("max_val_samples", "auto"),
                            cfg.get("batch_size"))
    health = [build(cfg.health, features=features)] if cfg.get("health") is not None else []  # needs no labels
    if not data.has_labels():
        if enabled is True:
            raise ConfigError(f"monitors.enabled=true needs labelled data, and {data.source} has no labels; "
                              "set monitors.enabled=auto or false")
        return [*monitors, *health, features] if health else monitors
    probes = [build(cfg[name], features=features) for name in ("knn", "linear") if cfg.get(name) is not None]
    users = [*probes, *health]  # before `features`, which forgets the epoch's features once they have run
    return [*monitors, *users, features] if users else monitors


def build_callbacks(cfg: DictConfig, data: Any = None) -> list[pl.Callback]:
    """The `callbacks` group (configs/callbacks/), then the online monitors fitted to the data."""
    nodes = cfg.get("callbacks") or {}
    callbacks = [build(node) for node in nodes.values() if node is not None]
    return [*callbacks, *build_monitors(cfg.get("monitors"), data, cfg.seed)]


def trainer_settings(cfg: DictConfig) -> dict[str, Any]:
    """pl.Trainer's keyword arguments from `trainer`, with `auto` settings resolved for this machine (selfsup's
    own keys, nonfinite*, are left out: they are the module's)."""
    settings = OmegaConf.to_container(cfg.trainer, resolve=True)
    accelerator = settings.get("accelerator", "auto")
    settings["precision"] = resolve_precision(settings.get("precision", "auto"), accelerator)
    settings["sync_batchnorm"] = resolve_sync_batchnorm(settings.get("sync_batchnorm", "auto"), accelerator)
    if settings.get("benchmark") is None:  # cuDNN autotuning (fixed input sizes), unless deterministic
        settings["benchmark"] = not settings.get("deterministic")
    settings.pop("nonfinite", None)
    settings.pop("nonfinite_max_consecutive_skips", None)
    accepted = inspect.signature(pl.Trainer.__init__).parameters
    for key in settings:
        if key not in accepted:
            close = difflib.get_close_matches(key, list(accepted), n=1)
            hint = f"; did you mean trainer.{close[0]}?" if close else ""
            raise ConfigError(f"trainer.{key} is not an argument of Lightning's Trainer{hint}")
    if settings.get("max_steps", -1) > 0:  # Lightning logs every N steps only: a shorter run would log none
        settings["log_every_n_steps"] = max(1, min(settings.get("log_every_n_steps", 50), settings["max_steps"]))
    return settings


def build_trainer(cfg: DictConfig, run_dir: Path, names: dict[str, str], data: Any,
                  wandb_id: str | None = None) -> pl.Trainer:
    return pl.Trainer(
        **trainer_settings(cfg),
        default_root_dir=str(run_dir),
        logger=build_loggers(cfg, run_dir, names, wandb_id),
        callbacks=build_callbacks(cfg, data),
        use_distributed_sampler=False,  # our EpochSampler shards by rank itself (see data/sampling.py)
        plugins=[AtomicCheckpointIO(), *cluster_plugins()],
    )


def budget(trainer_cfg: DictConfig, steps_per_epoch: int) -> int:
    """Total optimizer steps of the run: max_steps when set, else max_epochs x steps per epoch."""
    if trainer_cfg.max_steps and trainer_cfg.max_steps > 0:
        return int(trainer_cfg.max_steps)
    if trainer_cfg.max_epochs and trainer_cfg.max_epochs > 0:
        return int(trainer_cfg.max_epochs) * steps_per_epoch
    raise ConfigError("set trainer.max_steps or trainer.max_epochs to a positive number")


def build_optim(cfg: DictConfig, global_batch: int, steps_per_epoch: int, total_steps: int) -> OptimConfig:
    """The optimizer recipe (`optim`, a partial) resolved for the global batch and the run's length."""
    return build(cfg.optim)(global_batch=global_batch, steps_per_epoch=steps_per_epoch, total_steps=total_steps)


def build_module(cfg: DictConfig, pieces: Pieces, trainer: pl.Trainer) -> PretrainModule:
    """The LightningModule, with the optimizer recipe resolved for the global batch and the run's length."""
    per_step = pieces.data.batch_size * trainer.world_size
    steps_per_epoch = max(1, pieces.data.num_train_samples() // per_step // trainer.accumulate_grad_batches)
    optim = build_optim(cfg, per_step * trainer.accumulate_grad_batches, steps_per_epoch,
                        budget(cfg.trainer, steps_per_epoch))
    pieces.objective.bind_schedule(steps_per_epoch, optim.total_steps)
    return PretrainModule(pieces.backbone, pieces.objective, optim, compile=cfg.compile,
                          nonfinite=cfg.trainer.get("nonfinite", "stop"),
                          max_consecutive_skips=cfg.trainer.get("nonfinite_max_consecutive_skips", 10), seed=cfg.seed)


# -- a pretrained run, for evaluation -----------------------------------------------------------------------------
def verified_checkpoint(path: Path, run_dir: Path) -> dict[str, Any]:
    """A training checkpoint that passes its checks (checkpoint_io.load_checkpoint); refused in one line otherwise."""
    try:
        return load_training_checkpoint(path)
    except CheckpointError as e:
        raise CheckpointError(f"{one_line(e)}; give another checkpoint of {run_dir} with checkpoint=FILE") from None


def load_pretrained(path: str | Path | None, eval_model_modality: str | tuple[str, ...] | None = None,
                    random_init: bool = False, seed: int = 0) -> Pretrained:
    """Rebuild the run's backbone and objective from its config.yaml (checked: run folders are data), load the
    checkpoint's weights (strictly), and return the objective's evaluation model (Objective.eval_model).

    That is the backbone, or the teacher's copy of it (DINO), or, for a protocol that asks for an
    `eval_model_modality` (zero-shot: `image-text` or `audio-text`), a model of that modality (a dual encoder); a
    run whose eval model has another modality is a ConfigError. A model of another modality than the backbone's, which a
    protocol did not ask for, is left aside: kNN on a CLIP run embeds with its image tower. `random_init`: the
    same architecture at its random initialisation (seeded), no weights loaded: the floor that pretraining must
    beat, measured by the same protocol on the same data.
    """
    ckpt_path, run_dir = resolve_checkpoint(path)
    run_cfg = runs.trusted_config(run_dir)
    checkpoint = {} if random_init else verified_checkpoint(ckpt_path, run_dir)
    if random_init:
        torch.manual_seed(seed)
    backbone = build(run_cfg.backbone)
    if not random_init:
        load_weights(backbone, backbone_state(checkpoint, ckpt_path), ckpt_path, run_dir, "backbone")
    objective = build(run_cfg.objective, backbone=backbone)
    model = objective.eval_model(backbone)
    have = getattr(model, "modality", None)
    if eval_model_modality is not None and have not in accepted(eval_model_modality):
        raise ConfigError(f"{run_dir} was trained with {type(objective).__name__}, whose evaluation model takes "
                          f"{have} input; this protocol needs an {' or '.join(accepted(eval_model_modality))} model "
                          "(a run of an objective that trains one)")
    if eval_model_modality is None and have != getattr(backbone, "modality", None):
        model = backbone
    if model is not backbone and not random_init:
        load_weights(objective, objective_state(checkpoint), ckpt_path, run_dir, "objective")
    return Pretrained(model.eval(), run_cfg, ckpt_path, run_dir, int(checkpoint.get("global_step", 0)))


def build_protocol(node: DictConfig) -> Protocol:
    return build(node)


def run_tokenizer_path(run_cfg: DictConfig, run_dir: Path | None = None) -> str | None:
    """The tokenizer file a text or image-text run trained with: the copy in its run folder, else (runs from
    before that copy) the data.tokenizer.path it was given, or the one cached for its corpus."""
    kept = runs.kept_tokenizer(run_dir) if run_dir is not None else None
    if kept is not None:
        return str(kept)
    given = OmegaConf.select(run_cfg, "data.tokenizer.path")
    if given:
        return str(given)
    data = build(run_cfg.data)
    _ = data.tokenizer  # loads (or finds in the cache) the tokenizer trained on the run's corpus
    return str(data.tokenizer_path) if data.tokenizer_path else None


def run_captions(run_cfg: DictConfig, run_dir: Path | None = None) -> Captions:
    """An image-text run's caption tokenizer (data/image_text.Captions): its tokenizer file and context length."""
    path = run_tokenizer_path(run_cfg, run_dir)
    if path is None:
        raise ConfigError("the run's data has no tokenizer; zero-shot evaluation needs an image-text run")
    settings = tokenizer_settings({**OmegaConf.to_container(run_cfg.data.tokenizer), "path": path})
    tokenizer, _, info = resolve_tokenizer(settings, corpus=lambda: None)  # loads the file: no corpus needed
    return Captions(tokenizer, info, int(OmegaConf.select(run_cfg, "data.context_length", default=77)))


def pretraining_normalization(run_cfg: DictConfig) -> tuple[list[float], list[float]] | None:
    """The per-channel mean and std the run's images were normalised with, which its backbone expects of any
    images it embeds later (as CLIP and timm models carry their preprocessing); None where the run's data
    config cannot be built here or has no images."""
    try:
        data = build(run_cfg.data)  # the constructor only: nothing is read
    except (SelfsupError, InstantiationException, ImportError, TypeError, ValueError):
        return None
    if not hasattr(data, "mean"):
        return None
    return data.mean.flatten().tolist(), data.std.flatten().tolist()


def build_eval_data(data_cfg: DictConfig | None, pre: Pretrained, views: list[dict[str, Any]], seed: int = 0,
                    batch_size: int | None = None) -> Any:
    """The data module for a pretrained run (`data_cfg`, a `data=` choice, or the run's own), fitted to the
    backbone's input and the run's tokenizer, set up, with the protocol's training views."""
    node = eval_data_node(data_cfg, pre, tokenizer=lambda: run_tokenizer_path(pre.run_cfg, pre.run_dir),
                          normalization=lambda: pretraining_normalization(pre.run_cfg))
    if batch_size:
        node.batch_size = int(batch_size)
    data = build(node, views=views, seed=seed)
    data.setup()
    return data


def load_exported_module(folder: str | Path) -> torch.nn.Module:
    """A backbone exported in selfsup's own format (evaluation/export_formats.export_module), rebuilt from its
    config node (checked by instantiate.trusted_node: an export folder is data too) with its weights loaded
    strictly."""
    folder = Path(folder)
    config = json.loads((folder / EXPORT_CONFIG).read_text())
    node = trusted_node(config.get("backbone"), f"{folder / EXPORT_CONFIG} backbone")
    model = build(OmegaConf.create(node))
    model.load_state_dict(load_file(str(folder / EXPORT_WEIGHTS)), strict=True)
    return model.eval()
