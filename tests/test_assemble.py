"""The assembly layer: precision, SyncBatchNorm and augmentation placement follow the accelerator; the
zero-shot monitor's data is fitted to the run."""
from __future__ import annotations

import pytest
import torch
from helpers import write_images
from omegaconf import OmegaConf

from selfsup.assemble import place_augmentation, resolve_precision, resolve_sync_batchnorm
from selfsup.data.image_text import ImageTextManifest
from selfsup.errors import ConfigError, DataError


def test_precision_auto_is_fp32_on_cpu_and_overridable(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_precision("auto") == "32-true"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("auto") == "bf16-mixed"
    assert resolve_precision("16-mixed") == "16-mixed"
    assert resolve_precision("auto", accelerator="cpu") == "32-true"  # trainer=cpu on a GPU machine


def test_gpu_augmentation_without_a_gpu_says_so_in_one_line(monkeypatch, capsys):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    data = OmegaConf.create({"augment_on": "gpu"})
    place_augmentation(data, "auto")
    lines = capsys.readouterr().err.strip().splitlines()
    assert data.augment_on == "gpu" and len(lines) == 1 and "training runs on the CPU" in lines[0]


def test_gpu_defaults_follow_the_accelerator_not_the_machine(monkeypatch):
    """On a GPU machine, trainer=cpu trains on the CPU: no SyncBatchNorm, and views made in the data workers."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_sync_batchnorm("auto", "auto") and not resolve_sync_batchnorm("auto", "cpu")
    for accelerator, where in (("cpu", "cpu"), ("auto", "auto"), ("gpu", "auto")):
        data = OmegaConf.create({"augment_on": "auto"})
        place_augmentation(data, accelerator)
        assert data.augment_on == where, accelerator
    data = OmegaConf.create({"augment_on": "gpu"})
    place_augmentation(data, "cpu")
    assert data.augment_on == "gpu"  # an explicit choice stands


def test_zero_shot_monitor_data_is_fitted_to_the_run_and_checked(tmp_path):
    from omegaconf import OmegaConf

    from selfsup.assemble import zero_shot_data
    from selfsup.data.image_folder import ImageFolder

    for split in ("train", "val"):
        for name in ("cat", "dog"):
            write_images(tmp_path / "folder" / split / name, 2)
    run_data = ImageTextManifest(manifest=str(tmp_path / "pairs.jsonl"), image_size=24, num_workers=0,
                                 mean=(0.5, 0.4, 0.3), std=(0.2, 0.2, 0.2))
    node = OmegaConf.create({"_target_": "selfsup.data.image_folder.ImageFolder", "root": str(tmp_path / "folder"),
                             "image_size": 64, "channels": 1, "num_workers": 0})
    data = zero_shot_data(node, run_data, seed=0)
    assert isinstance(data, ImageFolder) and data.class_names() == ["cat", "dog"]
    assert data.image_size == 24 and data.channels == 3  # the run's images, whatever the config said
    assert data.mean.flatten().tolist() == pytest.approx([0.5, 0.4, 0.3])
    assert data.std.flatten().tolist() == pytest.approx([0.2] * 3)

    unnamed = OmegaConf.create({"_target_": "selfsup.data.synthetic.Synthetic", "num_samples": 8,
                                "num_val_samples": 8, "num_workers": 0})
    with pytest.raises(DataError, match="has no class names"):
        zero_shot_data(unnamed, run_data, seed=0)
    text = OmegaConf.create({"_target_": "selfsup.data.text_corpora.TextFiles", "root": str(tmp_path)})
    with pytest.raises(ConfigError, match="monitors.zero_shot.data must be labelled image data"):
        zero_shot_data(text, run_data, seed=0)
