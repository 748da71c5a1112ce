"""What `python export.py checkpoint=RUN out=DIR` runs: rebuild a run's backbone and write it in the format its
family has (evaluation/export_formats.py): timm for ViTs and ResNets, a safetensors text encoder for the text
transformer, and selfsup's own module format for any other backbone."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from selfsup.assemble import load_exported_module, load_pretrained, pretraining_normalization, run_tokenizer_path
from selfsup.backbones.resnet import ResNet
from selfsup.backbones.text_transformer import TextTransformer
from selfsup.backbones.vit import ViT
from selfsup.evaluation.export_formats import (
    CONFIG,
    WEIGHTS,
    check_same_features,
    export_image,
    export_module,
    export_text,
)


def export(checkpoint: str | Path, out: str | Path) -> dict[str, Any]:
    """Export a run's backbone to `out`; returns what config.json says."""
    pre = load_pretrained(checkpoint)
    target = Path(str(out)).expanduser()
    if isinstance(pre.backbone, (ViT, ResNet)):
        return export_image(pre, target, pretraining_normalization(pre.run_cfg))
    if isinstance(pre.backbone, TextTransformer):
        return export_text(pre, target, run_tokenizer_path(pre.run_cfg, pre.run_dir))
    config = export_module(pre, target)
    check_same_features(load_exported_module(target), pre.backbone)
    return config


def export_and_tell(checkpoint: str, out: str) -> None:
    """Export, then print what was written and the call that loads it."""
    config = export(checkpoint, out)
    out = Path(out)
    if config["format"] == "timm" and config["cifar_stem"]:
        print(f"wrote {out / WEIGHTS} and {out / CONFIG}\nload with: "
              f"selfsup.evaluation.export_formats.load_timm({str(out)!r}) "
              "(timm has no create kwarg for the CIFAR stem; load_timm builds the timm ResNet, swaps in the stem "
              "and loads the weights strictly)")
    elif config["format"] == "timm":
        kwargs = ", ".join(f"{k}={v!r}" for k, v in config["timm_kwargs"].items())
        overlay = ", ".join(f"{k}={v!r}" for k, v in {"file": str(out / WEIGHTS),
                                                        **config["pretrained_cfg_overlay"]}.items())
        print(f"wrote {out / WEIGHTS} and {out / CONFIG}\nload with: timm.create_model({config['timm_name']!r}, "
              f"pretrained=True, num_classes=0, {kwargs}, pretrained_cfg_overlay=dict({overlay}))")
    elif config["format"] == "selfsup-text":
        print(f"wrote {out / WEIGHTS}, {out / CONFIG} and {out / config['tokenizer']}; "
              "load with selfsup.evaluation.export_formats.load_text_encoder(DIR)")
    else:
        print(f"wrote {out / WEIGHTS} and {out / CONFIG}; load with selfsup.assemble.load_exported_module(DIR)")
