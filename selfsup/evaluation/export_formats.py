"""The formats a pretrained backbone is exported in, for use outside selfsup
(`python export.py checkpoint=RUN out=DIR`).

Image backbones become `DIR/model.safetensors` with the state dict of the plain timm model (selfsup's `vit.` /
`net.` prefix stripped) and `DIR/config.json` in timm's own layout (`architecture`, `model_args`,
`pretrained_cfg`), so that `timm.create_model("local-dir:DIR", pretrained=True)` loads it, and
`timm.create_model("hf-hub:USER/REPO", pretrained=True)` once the folder is on the Hub. Pooling follows the
backbone: `cls` is timm's `global_pool="token"`; `mean` is `global_pool="avg"` with `fc_norm=False` (selfsup
normalises every token, then averages, as timm does without fc_norm). ResNets trained with the CIFAR stem (3x3
stride-1 first convolution, no max-pool) have no timm create kwarg for that stem: build them with
`load_timm(DIR)` here, which swaps the stem as selfsup does and loads the weights strictly.

Text encoders become transformers models (evaluation/hf_text.py). Before anything is reported written, the
export checks that the rebuilt model gives the backbone's features.
"""
from __future__ import annotations

import inspect
import json
from pathlib import Path
from typing import Any

import torch
from omegaconf import DictConfig, OmegaConf
from torch import nn

from selfsup.backbones.resnet import ResNet
from selfsup.backbones.vit import ViT, as_pair
from selfsup.errors import ConfigError
from selfsup.evaluation.pretrained import Pretrained
from selfsup.modalities import AUDIO_INPUT_KEYS

WEIGHTS, CONFIG = "model.safetensors", "config.json"


def _extra_kwargs(backbone_cfg: DictConfig, *classes: type) -> dict[str, Any]:
    """Config keys the selfsup classes (a backbone's and its bases') do not take themselves: passed through to
    timm.create_model (e.g. depth)."""
    own = {name for cls in classes for name in inspect.signature(cls.__init__).parameters}
    node = OmegaConf.to_container(backbone_cfg, resolve=True)
    return {k: v for k, v in node.items() if k != "_target_" and k not in own}


def timm_spec(backbone: nn.Module, backbone_cfg: DictConfig) -> dict[str, Any]:
    """The timm name, create_model kwargs and stem of an image backbone."""
    if isinstance(backbone, ViT):
        kwargs = {"img_size": backbone.img_size, "patch_size": backbone.patch_size, "in_chans": backbone.in_chans,
                  "class_token": True, **_extra_kwargs(backbone_cfg, ViT, type(backbone))}
        if backbone.registers:
            kwargs["reg_tokens"] = backbone.registers
        if backbone.layer_scale is not None:
            kwargs["init_values"] = backbone.layer_scale
        kwargs.update({"global_pool": "token" if backbone.pool == "cls" else "avg", "fc_norm": False})
        return {"name": backbone.name, "kwargs": kwargs, "cifar_stem": False}
    if isinstance(backbone, ResNet):
        kwargs = {"in_chans": backbone.in_chans, **_extra_kwargs(backbone_cfg, ResNet)}
        return {"name": backbone.name, "kwargs": kwargs, "cifar_stem": backbone.cifar_stem}
    raise ConfigError(f"no timm export for {type(backbone).__name__}; image backbones are ViT and ResNet")


def timm_module(backbone: nn.Module) -> nn.Module:
    """The plain timm model inside a selfsup image backbone."""
    return backbone.vit if hasattr(backbone, "vit") else backbone.net


def cifar_stem(model: nn.Module) -> nn.Module:
    """Give a timm ResNet selfsup's CIFAR stem (3x3 stride-1 convolution, no max-pool), in place."""
    width, in_chans = model.conv1.out_channels, model.conv1.in_channels
    model.conv1 = nn.Conv2d(in_chans, width, kernel_size=3, stride=1, padding=1, bias=False)
    model.bn1 = nn.BatchNorm2d(width)
    model.maxpool = nn.Identity()
    return model


def load_timm(folder: str | Path) -> nn.Module:
    """The exported image backbone as a timm model (CIFAR stem included), weights loaded strictly, in eval mode."""
    import timm
    from safetensors.torch import load_file

    folder = Path(folder)
    cfg = json.loads((folder / CONFIG).read_text())
    model = timm.create_model(cfg["architecture"], pretrained=False, num_classes=0, **cfg["model_args"])
    if cfg.get("cifar_stem"):
        cifar_stem(model)
    model.load_state_dict(load_file(str(folder / WEIGHTS)), strict=True)
    return model.eval()


def _state(module: nn.Module) -> dict[str, torch.Tensor]:
    """A state dict safetensors can write: contiguous tensors that share no storage."""
    return {k: v.detach().cpu().contiguous().clone() for k, v in module.state_dict().items()}


def export_image(pre: Pretrained, out: Path,
                 normalization: tuple[list[float], list[float]] | None = None) -> dict[str, Any]:
    """`normalization`: the mean and std of the pretraining images, for timm's pretrained_cfg."""
    from safetensors.torch import save_file

    spec = timm_spec(pre.backbone, pre.run_cfg.backbone)
    norm = {} if normalization is None else {"mean": [round(float(v), 6) for v in normalization[0]],
                                             "std": [round(float(v), 6) for v in normalization[1]]}
    chans, (height, width) = pre.backbone.in_chans, as_pair(pre.backbone.img_size)
    config = {"architecture": spec["name"], "num_classes": 0, "num_features": pre.backbone.num_features,
              "model_args": spec["kwargs"],
              "pretrained_cfg": {"input_size": [chans, height, width], "num_classes": 0,
                                 "fixed_input_size": isinstance(pre.backbone, ViT),  # learned position grid
                                 "crop_pct": 1.0, **norm},
              "format": "timm", "cifar_stem": spec["cifar_stem"],
              "source": pre.source()}
    audio = audio_input(pre)
    if audio is not None:
        config["audio_input"] = audio
    out.mkdir(parents=True, exist_ok=True)
    save_file(_state(timm_module(pre.backbone)), str(out / WEIGHTS))
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    check_same_features(load_timm(out), pre.backbone)
    return config


def timm_usage(config: dict[str, Any], where: str, hub: bool) -> str:
    """Python that loads an image export from `where` (a folder, or a Hub repo) and embeds an image."""
    chans, height, width = config["pretrained_cfg"]["input_size"]
    if config["cifar_stem"]:  # timm has no create kwarg for this stem
        load = ("from selfsup.evaluation.export_formats import load_timm\n\n"
                f"model = load_timm({where!r})  # the CIFAR stem needs selfsup's loader")
    else:
        source = f"hf-hub:{where}" if hub else f"local-dir:{where}"
        load = f"import timm\n\nmodel = timm.create_model({source!r}, pretrained=True, num_classes=0).eval()"
    return (f"import torch\n{load}\n"
            f"{input_line(config, chans, height, width)}\n"
            "with torch.no_grad():\n    features = model(images)  # (2, num_features), pooled as in pretraining\n")


def input_line(config: dict[str, Any], chans: int, height: int, width: int) -> str:
    """The usage snippet's input: images, or (audio backbones) log-mel spectrograms made as in pretraining."""
    audio = config.get("audio_input")
    if audio is None:
        return (f"images = torch.rand(2, {chans}, {height}, {width})  "
                "# normalise with model.pretrained_cfg's mean and std")
    settings = ", ".join(f"{k}={audio[k]!r}" for k in ("sample_rate", "n_fft", "hop_length", "n_mels", "f_min",
                                                       "f_max"))
    samples = round(audio["clip_seconds"] * audio["sample_rate"])
    return ("from selfsup.data.spectrogram import LogMel  # or any log-mel (dB, Slaney mel, Hann window) alike\n"
            f"waves = torch.randn(2, {samples})  "
            f"# mono clips of {audio['clip_seconds']} s at {audio['sample_rate']} Hz\n"
            f"images = (LogMel({settings})(waves) - {audio['mel_mean']}) / {audio['mel_std']}  # (2, 1, {height}, "
            f"{width})")


def audio_input(pre: Pretrained) -> dict[str, Any] | None:
    """How an audio backbone's input was made (config.json's `audio_input`): the run's clip and spectrogram."""
    if getattr(pre.backbone, "modality", None) != "audio":
        return None
    return {key: pre.run_cfg.data[key] for key in AUDIO_INPUT_KEYS if key in pre.run_cfg.data}


# -- any other backbone -------------------------------------------------------------------------------------------
def export_module(pre: Pretrained, out: Path) -> dict[str, Any]:
    """A backbone with no ecosystem format (one of your own): `model.safetensors` and `config.json` holding its
    config node, which `selfsup.assemble.load_exported_module(DIR)` rebuilds (its `_target_` checked as for any
    run folder's config) and loads strictly."""
    from safetensors.torch import save_file

    config = {"format": "selfsup-module", "backbone": OmegaConf.to_container(pre.run_cfg.backbone, resolve=True),
              "modality": getattr(pre.backbone, "modality", "image"),
              "num_features": getattr(pre.backbone, "num_features", None),
              "source": pre.source()}
    audio = audio_input(pre)
    if audio is not None:
        config["audio_input"] = audio
    out.mkdir(parents=True, exist_ok=True)
    save_file(_state(pre.backbone), str(out / WEIGHTS))
    (out / CONFIG).write_text(json.dumps(config, indent=2) + "\n")
    return config


def check_same_features(exported: nn.Module, backbone: nn.Module) -> None:
    """The rebuilt module gives the backbone's features on inputs of its modality."""
    if getattr(backbone, "modality", "image") == "text":
        ids = torch.randint(5, int(getattr(backbone, "vocab_size", 6)), (2, 8))
        inputs: tuple[torch.Tensor, ...] = (ids, torch.ones_like(ids))
    else:
        height, width = as_pair(getattr(backbone, "img_size", 32))
        inputs = (torch.randn(2, getattr(backbone, "in_chans", 3), height, width),)
    with torch.no_grad():
        a, b = exported.eval()(*inputs), backbone.eval()(*inputs)
    if a.shape != b.shape or not torch.allclose(a, b, rtol=1e-4, atol=1e-5):
        raise ConfigError("the exported model's features differ from the backbone's; please report this")
