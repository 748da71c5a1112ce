"""Adding an objective, or a backbone, is one Python file and one config, in a folder of the user's own: nothing in
selfsup changes. Each is trained, resumed, evaluated (kNN), embedded and exported through the user's commands."""
from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import ROOT, run_in_process

TOY_OBJECTIVE = '''
"""A toy pretext task: predict each image's mean brightness from its features."""
import torch
from torch import nn

from selfsup.objectives.base import Objective, StepOutput


class Brightness(Objective):
    modality = "image"

    def __init__(self, backbone, views=None):
        super().__init__(views or [{"key": "image", "crop_scale": [0.5, 1.0], "hflip": 0.5}])
        self.head = nn.Linear(backbone.num_features, 1)

    def forward(self, backbone, batch):
        images = batch["image"]
        features = backbone(images)
        loss = nn.functional.mse_loss(self.head(features).squeeze(1), images.mean(dim=(1, 2, 3)))
        return StepOutput(loss, {"brightness_error": loss.detach()}, features=features.detach())
'''

TOY_OBJECTIVE_CONFIG = '''
_target_: lab_objective.Brightness
views:
  - key: image
    crop_scale: [0.5, 1.0]
    hflip: 0.5
'''

TOY_BACKBONE = '''
"""A toy image backbone: one convolution and global average pooling."""
import torch
from torch import nn


class TinyConv(nn.Module):
    modality = "image"

    def __init__(self, img_size, in_chans, width=16):
        super().__init__()
        self.img_size, self.in_chans, self.num_features = img_size, in_chans, width
        self.conv = nn.Conv2d(in_chans, width, kernel_size=3, padding=1)

    def forward(self, images):
        return torch.relu(self.conv(images)).mean(dim=(2, 3))
'''

TOY_BACKBONE_CONFIG = '''
_target_: lab_backbone.TinyConv
img_size: ${data.image_size}
in_chans: ${data.channels}
width: 16
'''

LAB_CALLBACK = '''
"""A callback of one's own, added from the command line: it leaves a file when training ends."""
from pathlib import Path

import pytorch_lightning as pl


class Finished(pl.Callback):
    def __init__(self, path):
        self.path = Path(path)

    def on_train_end(self, trainer, pl_module):
        self.path.write_text(str(trainer.global_step))
'''

TRUSTED = "lab_objective.,lab_backbone.,lab_callback.Finished"
DATA = ["data=synthetic", "data.num_samples=128", "data.num_val_samples=32", "data.batch_size=32", "data.num_workers=0",
        "trainer=cpu", "logger=csv", "trainer.log_every_n_steps=1", "monitors.enabled=false"]


@pytest.fixture(scope="module")
def lab(tmp_path_factory) -> Path:
    """The user's own folder: two Python files and their two configs, nothing else."""
    root = tmp_path_factory.mktemp("lab")
    (root / "lab_objective.py").write_text(TOY_OBJECTIVE)
    (root / "lab_backbone.py").write_text(TOY_BACKBONE)
    (root / "lab_callback.py").write_text(LAB_CALLBACK)
    (root / "configs" / "objective").mkdir(parents=True)
    (root / "configs" / "backbone").mkdir(parents=True)
    (root / "configs" / "objective" / "brightness.yaml").write_text(TOY_OBJECTIVE_CONFIG)
    (root / "configs" / "backbone" / "tiny_conv.yaml").write_text(TOY_BACKBONE_CONFIG)
    return root


def command(lab: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    """A user's command line from the lab folder, with the lab's modules importable and trusted by name, run in
    this process (the same command line, without importing torch once more)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.syspath_prepend(str(lab))
        return run_in_process(ROOT / script, list(args), cwd=lab,
                              env={"SELFSUP_TRUSTED_TARGETS": TRUSTED, "WANDB_MODE": "offline"})


def lifecycle(lab: Path, run: Path, choice: list[str]) -> None:
    """Train 3 steps, resume to 5 (with a callback of one's own added on the command line), then kNN, embed and
    export the run."""
    searchpath = f"hydra.searchpath=[file://{lab / 'configs'}]"
    finished = run.parent / "finished.txt"
    for steps, resume in ((3, "null"), (5, "auto")):
        r = command(lab, "train.py", searchpath, *choice, *DATA, f"trainer.max_steps={steps}", f"resume={resume}",
                    f"run_dir={run}", "+callbacks.finished._target_=lab_callback.Finished",
                    f"+callbacks.finished.path={finished}")
        assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from" in r.stdout and "(step 3;" in r.stdout
    assert finished.read_text() == "5"
    with (run / "metrics.csv").open(newline="") as f:
        logged = [int(row["step"]) for row in csv.DictReader(f) if row.get("train/loss")]
    assert logged == [0, 1, 2, 3, 4]  # each step once, across the resume
    assert command(lab, "eval.py", f"checkpoint={run}", "protocol=knn", "logger=csv", "device=cpu").returncode == 0
    assert 0 <= json.loads((run / "results.json").read_text())["knn"]["val/knn_top1"] <= 1
    assert command(lab, "embed.py", f"checkpoint={run}", f"out={run / 'features.npz'}", "device=cpu").returncode == 0
    assert (run / "features.npz").is_file()
    assert command(lab, "export.py", f"checkpoint={run}", f"out={run / 'export'}").returncode == 0
    assert (run / "export" / "model.safetensors").is_file()


@pytest.fixture(scope="module")
def objective_run(lab, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("objective") / "run"
    lifecycle(lab, run, ["objective=brightness", "backbone=vit_tiny", "+backbone.depth=1"])
    return run


def test_an_objective_of_ones_own_is_one_file_and_one_config(objective_run):
    assert (objective_run / "checkpoints" / "last.ckpt").is_file()  # the lifecycle's checks ran in the fixture


def test_a_backbone_of_ones_own_is_one_file_and_one_config(lab, tmp_path):
    run = tmp_path / "run"
    lifecycle(lab, run, ["objective=simclr", "backbone=tiny_conv", "objective.projector_hidden_dim=32",
                         "objective.projector_dim=16"])
    export = json.loads((run / "export" / "config.json").read_text())
    assert export["format"] == "selfsup-module" and export["backbone"]["_target_"] == "lab_backbone.TinyConv"


def test_a_run_of_ones_own_code_is_refused_unless_trusted(lab, objective_run):
    """The run folder names lab_objective.Brightness: without SELFSUP_TRUSTED_TARGETS, eval.py refuses it."""
    env = dict(os.environ, PYTHONPATH=str(lab), PYTHONWARNINGS="ignore")
    env.pop("SELFSUP_TRUSTED_TARGETS", None)
    r = subprocess.run([sys.executable, str(ROOT / "eval.py"), f"checkpoint={objective_run}", "protocol=knn",
                        "logger=csv"], cwd=lab, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    assert "refused objective._target_='lab_objective.Brightness'" in r.stderr
    assert "Traceback" not in r.stderr
