"""The joint-embedding objectives through train.py: Fashion-MNIST, and weights, EMA targets and teachers across a
resume, then evaluation and export of the run folder."""
from __future__ import annotations

import pytest
import torch
from conftest import ROOT, assert_same_last_checkpoint, train_whole_and_resumed

SMALL = ["logger=csv", "trainer=cpu", "data.num_workers=0", "data.batch_size=16", "trainer.max_steps=2",
         "trainer.limit_val_batches=1", "trainer.log_every_n_steps=1", "monitors.enabled=false"]


PIECES = {"simclr": ["objective=simclr"], "byol": ["objective=byol"],
          "dino-resnet": ["objective=dino", "backbone=resnet18", "objective.out_dim=256"]}


@pytest.mark.skipif(not (ROOT / "configs").is_dir(), reason="needs the repository")
@pytest.mark.parametrize("objective", sorted(PIECES))
def test_objective_trains_end_to_end_on_fashion_mnist(train, tmp_path, objective):
    from selfsup.data import fashion_mnist

    if not fashion_mnist.DEBIAN_DIR.is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed")
    r = train([*PIECES[objective], *SMALL, f"run_dir={tmp_path}"])
    assert r.returncode == 0, r.stderr[-3000:]
    rows = (tmp_path / "metrics.csv").read_text()
    assert "train/loss" in rows and (tmp_path / "checkpoints" / "last.ckpt").is_file()
    state = torch.load(tmp_path / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    assert "backbone.net.conv1.weight" in state and state["backbone.net.conv1.weight"].shape[-1] == 3  # CIFAR stem
    if objective == "byol":
        assert "objective.target.copies.backbone.net.conv1.weight" in state
        assert "train/target_momentum" in rows
    if objective == "dino-resnet":
        assert "objective.teacher.copies.backbone.net.conv1.weight" in state and "train/teacher_temp" in rows


def test_byol_resumed_run_has_the_uninterrupted_target(train, tmp_path):
    """The EMA target and its momentum schedule continue exactly from a mid-run checkpoint."""
    common = ["objective=byol", "data=synthetic", "data.image_size=16", "data.num_samples=128", *SMALL,
              "trainer.max_steps=4", "checkpoint.every_n_steps=2"]
    whole, resumed = train_whole_and_resumed(train, common, tmp_path, step=2)
    assert_same_last_checkpoint(whole, resumed, global_step=4)
    final, middle = (torch.load(whole / "checkpoints" / name, map_location="cpu", weights_only=True)["state_dict"]
                     for name in ("last.ckpt", "step_0000002.ckpt"))
    targets = [k for k in final if k.startswith("objective.target.copies.")]
    assert targets and not torch.equal(final[targets[0]], middle[targets[0]])  # the target moved after step 2


VIT = ["+backbone.depth=2", "backbone.patch_size=4"]
RESUMED = {"dino": ["objective=dino", "backbone=vit_tiny", *VIT, "objective.out_dim=256", "objective.hidden_dim=64"],
           "dinov2": ["objective=dinov2", *VIT, "objective.out_dim=256", "objective.hidden_dim=64",
                      "objective.patch_out_dim=256"],  # ViT-Tiny with 4 registers
           "vicreg": ["objective=vicreg", "backbone=vit_tiny", *VIT, "objective.expander_dim=64"],
           "barlow_twins": ["objective=barlow_twins", "backbone=vit_tiny", *VIT, "objective.projector_dim=64"],
           "ijepa": ["objective=ijepa", *VIT, "objective.predictor_dim=32", "objective.predictor_depth=1",
                     "objective.predictor_heads=2"],
           "mocov3": ["objective=mocov3", *VIT, "objective.hidden_dim=64", "objective.dim=32",
                      "backbone.freeze_patch_embed=true"]}
# the exported weights: DINO's and I-JEPA's teacher (as their papers evaluate), else the online backbone (MoCo v3's
# query encoder)
TEACHER = "objective.teacher.copies."


@pytest.mark.parametrize("objective", sorted(RESUMED))
def test_resumes_bit_exact_then_evaluates_and_exports(train, tmp_path, objective):
    """The weights, EMA teachers, DINO's centre and temperature continue exactly from a mid-run checkpoint; kNN (and
    for DINO and DINOv2 the linear probe) and the export (of the teacher's backbone for DINO, DINOv2 and I-JEPA)
    work on its run folder."""
    from conftest import run_in_process
    from safetensors.torch import load_file

    common = [*RESUMED[objective], "data=synthetic", "data.image_size=16", "data.num_samples=128", *SMALL,
              "trainer.max_steps=4", "checkpoint.every_n_steps=2"]
    whole, resumed = train_whole_and_resumed(train, common, tmp_path, step=2)
    assert_same_last_checkpoint(whole, resumed, global_step=4)
    state = torch.load(whole / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
    rows = (whole / "metrics.csv").read_text()
    if objective == "dino":
        assert state["objective.centering.center"].abs().sum() > 0
    if objective == "dinov2":
        assert "objective.teacher.copies.patch_head.prototypes" in state and "objective.mask_token" in state
        assert state["backbone.vit.reg_token"].shape[1] == 4
    if objective.startswith("dino"):
        assert "train/teacher_temp" in rows and "train/teacher_momentum" in rows
    if objective == "vicreg":
        assert "train/variance" in rows and "train/covariance" in rows
    if objective == "mocov3":  # the frozen random patch projection did not move
        middle = torch.load(whole / "checkpoints" / "step_0000002.ckpt", map_location="cpu",
                            weights_only=True)["state_dict"]
        assert torch.equal(state["backbone.vit.patch_embed.proj.weight"],
                           middle["backbone.vit.patch_embed.proj.weight"])
        assert not torch.equal(state["backbone.vit.blocks.0.attn.qkv.weight"],
                               middle["backbone.vit.blocks.0.attn.qkv.weight"])
    for protocol in ("knn", "linear") if objective.startswith("dino") else ("knn",):
        r = run_in_process(ROOT / "eval.py", [f"checkpoint={whole}", f"protocol={protocol}", "device=cpu",
                                              "max_train_samples=64", "max_val_samples=32", "logger=csv"])
        assert r.returncode == 0, r.stderr[-3000:]
    r = run_in_process(ROOT / "export.py", [f"checkpoint={whole}", f"out={tmp_path / 'export'}"])
    assert r.returncode == 0 and (tmp_path / "export" / "model.safetensors").is_file(), r.stderr[-3000:]
    exported = load_file(tmp_path / "export" / "model.safetensors")
    prefix = (TEACHER if objective in ("dino", "dinov2", "ijepa") else "") + "backbone.vit."
    assert exported and all(torch.equal(exported[k], state[prefix + k]) for k in exported if prefix + k in state)
    assert sum(prefix + k in state for k in exported) > 10
