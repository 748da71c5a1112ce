"""The labelled data an evaluation runs on: the run's own data, or any `data=` choice, fitted to the backbone.

Image data is resized to the size the backbone was pretrained at (a ViT's position grid is fixed) and must
have its channel count; audio data takes the run's sample rate, clip length and spectrogram settings; text data
keeps the run's tokenizer (token ids are only meaningful with it).
"""
from __future__ import annotations

from typing import Any, Callable

import torch
from omegaconf import DictConfig, OmegaConf

from selfsup.checks import target_attr
from selfsup.errors import ConfigError, DataError
from selfsup.evaluation.pretrained import Pretrained
from selfsup.modalities import AUDIO_INPUT_KEYS, GRID_MODALITIES, evaluates_on


def eval_data_node(data_cfg: DictConfig | None, pre: Pretrained, tokenizer: Callable[[], str | None],
                   normalization: Callable[[], tuple[list[float], list[float]] | None]) -> DictConfig:
    """The data config to build: `data_cfg` (a `data=` choice) or the run's, with the backbone's input shape and
    the run's tokenizer (`tokenizer()`: its file) and, for other image data, the run's image normalisation
    (`normalization()`: mean and std, or None where unknown)."""
    run_cfg, backbone = pre.run_cfg, pre.backbone
    given = data_cfg is not None
    node = OmegaConf.create(OmegaConf.to_container(data_cfg if given else run_cfg.data, resolve=True))
    modality = getattr(backbone, "modality", "image")
    have = target_attr(node, "modality")
    if have and not evaluates_on(modality, have):
        raise ConfigError(f"the checkpoint's backbone takes {modality} input but data {node._target_} gives {have}; "
                          f"pick {modality} data (or leave data= out to use the run's own)")
    if modality in ("image", "image-text"):
        size = getattr(backbone, "img_size", None)
        if size is not None and node.get("image_size") != size:
            if given and node.get("image_size") is not None:
                print(f"note: images are resized to {size} px, the size the backbone was pretrained at "
                      f"(data.image_size was {node.get('image_size')})")
            node.image_size = size
        chans = getattr(backbone, "in_chans", None)
        data_chans = node.get("channels", 3)
        if chans is not None and data_chans != chans:
            raise ConfigError(f"the backbone takes {chans}-channel images but the data gives {data_chans}; pick data "
                              f"with {chans} channels (data.channels={chans} where the source can convert)")
        norm = normalization() if given else None
        if norm is not None and len(norm[0]) == data_chans:  # the backbone expects its pretraining input scale
            node.mean, node.std = norm
    if modality in ("audio", "audio-text"):
        for key in AUDIO_INPUT_KEYS:  # the backbone's input: the run's clips and spectrograms
            if key in run_cfg.data:
                node[key] = run_cfg.data[key]
    if modality not in GRID_MODALITIES and node.get("tokenizer") is not None:  # token ids mean the run's tokens
        node.tokenizer.path = tokenizer()
        if node.get("context_length") is not None:
            node.context_length = OmegaConf.select(run_cfg, "data.context_length", default=node.context_length)
    return node


def label_fix(data: Any) -> str:
    """How to get labelled data of the data's kind. Text keeps a label per document only in data.mode=lines
    (a packed block spans documents), which is what a text run's own pretraining data usually is not."""
    if getattr(data, "modality", "image") != "text":
        return "pass data=NAME with labels (e.g. data=cifar10, data=fashion_mnist, data=image_folder data.root=DIR)"
    corpus = getattr(data, "corpus", None)
    if getattr(data, "mode", None) == "packed" and getattr(corpus, "labels", None) is not None:
        return f"its packed blocks span documents: add data={data.name} data.mode=lines (a document per sample)"
    return ("pass text with a label per document, in data.mode=lines: data=wordnet, data=text_files data.format=csv "
            "(or jsonl) data.label_field=COLUMN, or data=hf_text data.label_field=COLUMN")


def check_labelled(data: Any, what: str) -> None:
    """A DataError before any heavy work when the data has no labels or no validation split."""
    if not data.has_labels():
        raise DataError(f"{what} needs labelled data, and {data.source} has no labels; {label_fix(data)}")
    if data.eval_dataset("val") is None:
        raise DataError(f"{what} measures accuracy on a validation split, and {data.source} has none; use data with "
                        "one (image folders: DIR/val/<class>/...)")


def pick_device(name: str = "auto") -> torch.device:
    """`auto`: the GPU when there is one, else the CPU."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError as e:
        raise ConfigError(f"device={name}: {e}; use auto, cpu or cuda") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device={name} but no CUDA GPU is visible; use device=auto or cpu")
    return device
