"""What `python export.py checkpoint=RUN out=DIR [push_to_hub=USER/REPO]` runs: rebuild a run's backbone, write it
in the format its family has (timm for ViTs and ResNets, transformers for the text transformer, both and the
projections for an image-text run, selfsup's own module format for any other backbone), then a model card, and
publish the folder on the Hub if asked."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from omegaconf import OmegaConf
from torch import nn

from selfsup.assemble import (
    load_exported_module,
    load_pretrained,
    pretraining_normalization,
    run_tokenizer_path,
    verified_checkpoint,
)
from selfsup.backbones.resnet import ResNet
from selfsup.backbones.text_transformer import TextTransformer
from selfsup.backbones.vit import ViT
from selfsup.errors import ConfigError
from selfsup.evaluation.dual_export import dual_usage, export_dual
from selfsup.evaluation.export_formats import check_same_features, export_image, export_module, timm_usage
from selfsup.evaluation.hf_text import export_text, transformers_usage
from selfsup.evaluation.model_card import write_card
from selfsup.evaluation.pretrained import Pretrained, load_weights, objective_state
from selfsup.instantiate import build

USAGE = {"timm": timm_usage, "transformers": transformers_usage, "dual-encoder": dual_usage}


@dataclass
class Export:
    """What an export wrote (config.json's content), how the ecosystem loads it, and which run it came from."""

    config: dict[str, Any]
    library: str
    pipeline_tag: str
    run_dir: Path
    step: int

    def usage(self, where: str, hub: bool = False) -> str:
        """Python that loads the export from `where`: its folder, or (hub) its Hub repo."""
        if self.config["format"] in USAGE:
            return USAGE[self.config["format"]](self.config, where, hub)
        return ("from selfsup.assemble import load_exported_module\n\n"
                f"model = load_exported_module({where!r})  # a backbone of your own: selfsup rebuilds it\n")


def trained_objective(pre: Pretrained) -> tuple[nn.Module | None, nn.Module]:
    """The run's masked-LM head if its objective has one (Objective.export_heads), and its evaluation model; the
    objective's weights are read only when the export needs them (a head, a second tower)."""
    objective = build(pre.run_cfg.objective, backbone=pre.backbone)
    head = objective.export_heads().get("masked_lm")
    model = objective.eval_model(pre.backbone)
    if head is not None or getattr(model, "modality", None) == "image-text":
        load_weights(objective, objective_state(verified_checkpoint(pre.checkpoint, pre.run_dir)), pre.checkpoint,
                     pre.run_dir, "objective")
    return head, model.eval()


def export(checkpoint: str | Path, out: str | Path) -> Export:
    """Export a run's backbone to `out`, with its model card."""
    pre = load_pretrained(checkpoint)
    target = Path(str(out)).expanduser()
    if target.resolve() == pre.run_dir.resolve():
        raise ConfigError(f"out={out} is the run folder itself; export into a folder of its own, e.g. "
                          f"out={out}/export")
    head, model = trained_objective(pre)
    source = pre.source()
    lowercase = bool(OmegaConf.select(pre.run_cfg, "data.tokenizer.lowercase", default=True))
    if getattr(model, "modality", None) == "image-text":
        config = export_dual(pre, model, target, run_tokenizer_path(pre.run_cfg, pre.run_dir), lowercase,
                             pretraining_normalization(pre.run_cfg))
        library, tag = "transformers", "zero-shot-image-classification"
    elif isinstance(pre.backbone, (ViT, ResNet)):  # an audio ViT too: a timm ViT on spectrograms
        config = export_image(pre, target, pretraining_normalization(pre.run_cfg))
        audio = getattr(pre.backbone, "modality", None) == "audio"
        library, tag = "timm", "feature-extraction" if audio else "image-feature-extraction"
    elif isinstance(pre.backbone, TextTransformer):
        config = export_text(pre.backbone, target, run_tokenizer_path(pre.run_cfg, pre.run_dir), lowercase, head,
                             source)
        library, tag = "transformers", "fill-mask" if head is not None else "feature-extraction"
    else:
        config = export_module(pre, target)
        check_same_features(load_exported_module(target), pre.backbone)
        library, tag = "selfsup", "feature-extraction"
    done = Export(config, library, tag, pre.run_dir, pre.step)
    write_card(target, done.run_dir, done.step, library, tag, done.usage(str(target)))
    return done


def push_to_hub(folder: Path, repo: str, done: Export) -> str:
    """Publish the export folder as the Hub repo `repo` (created if needed), its card's usage naming the repo."""
    from huggingface_hub import HfApi

    write_card(folder, done.run_dir, done.step, done.library, done.pipeline_tag, done.usage(repo, hub=True))
    api = HfApi()
    api.create_repo(repo, exist_ok=True)
    return str(api.upload_folder(folder_path=str(folder), repo_id=repo, commit_message="selfsup export"))


def export_and_tell(checkpoint: str, out: str, hub_repo: str | None = None) -> None:
    """Export, then print what was written and the code that loads it."""
    done = export(checkpoint, out)
    folder = Path(out).expanduser()
    written = ", ".join(sorted(p.name for p in folder.iterdir()))
    print(f"wrote {folder}: {written}\nload with:\n{done.usage(str(folder))}")
    if hub_repo:
        print(f"published: {push_to_hub(folder, hub_repo, done)}")
