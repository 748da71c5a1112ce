"""Bad input to train.py: one line naming the problem and its fix, a non-zero exit, before training, no
traceback."""
from __future__ import annotations

import pytest
from conftest import TINY

CASES = {
    "unknown backbone config": (["backbone=vit_gigantic"], "unknown backbone 'vit_gigantic'; choose one of"),
    "unknown objective": (["objective=dino9"], "unknown objective 'dino9'; choose one of: byol, clip, mae"),
    "unknown data": (["data=imagenet22k"], "unknown data 'imagenet22k'; choose one of"),
    "unknown zero-shot data": (["data@monitors.zero_shot.data=imagenet_val"],
                               "unknown data 'imagenet_val'; choose one"),
    "unknown timm model": (["backbone.name=vit_nonexistent_patch16"], "unknown timm model 'vit_nonexistent_patch16'"),
    "patch does not divide image": (["backbone.patch_size=5"], "image size 28 is not divisible by patch size 5"),
    "mask ratio above 1": (["objective.mask_ratio=1.2"], "objective.mask_ratio must lie in (0, 1), got 1.2"),
    "mask ratio zero": (["objective.mask_ratio=0"], "objective.mask_ratio must lie in (0, 1)"),
    "batch larger than data": (["data=synthetic", "data.num_samples=40", "data.batch_size=64"],
                               "global batch 64 (data.batch_size=64 x 1 devices) is larger than the 40 training"),
    "missing image folder": (["data=image_folder", "data.root=/nonexistent/images"],
                             "data.root /nonexistent/images is not a folder"),
    "missing cifar": (["data=cifar10", "data.root=/nonexistent/cifar"],
                      "cifar10 not found under /nonexistent/cifar"),
    "unknown optimizer": (["optim.name=lamb"], "unknown optimizer 'lamb' in optim.name; choose adamw, lars or sgd"),
    "augmentation device": (["data.augment_on=tpu"],
                            "data.augment_on must be one of ('auto', 'cpu', 'gpu'), got 'tpu'"),
    "unknown view option": (["+objective.views.0.colour_jitter=0.4"], "unknown view options ['colour_jitter']"),
    "resume from nothing": (["resume=/nonexistent/run.ckpt"], "resume=/nonexistent/run.ckpt: no checkpoint at"),
}


@pytest.mark.parametrize("args,message", CASES.values(), ids=CASES.keys())
def test_bad_input_gives_one_line(train, tmp_path, args, message):
    r = train(["objective=mae", *TINY, "trainer.max_steps=1", f"run_dir={tmp_path / 'run'}", *args])
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], r.stderr[-2000:]
    assert not (tmp_path / "run" / "checkpoints").exists()  # nothing trained
