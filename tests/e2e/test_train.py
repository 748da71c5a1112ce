"""train.py end to end in a subprocess, and exact resume."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import torch
from conftest import TINY, assert_same_last_checkpoint, train_whole_and_resumed


def read_metrics(run_dir: Path) -> list[dict[str, str]]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        return list(csv.DictReader(f))


def losses_by_step(rows: list[dict[str, str]]) -> dict[int, float]:
    out: dict[int, float] = {}
    for r in rows:
        if r.get("train/loss"):
            step = int(r["step"])
            assert step not in out, f"step {step} logged twice"
            out[step] = float(r["train/loss"])
    return out


SYNTH = ["objective=mae", "data=synthetic", "data.batch_size=64", "data.num_samples=512", "data.num_val_samples=64",
         "trainer.log_every_n_steps=1", "checkpoint.every_n_steps=3", "trainer.max_steps=11",
         "trainer.deterministic=true", *TINY]


def test_resumed_run_matches_an_uninterrupted_one(train, tmp_path):
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    r = train([*SYNTH, f"run_dir={full}"])
    assert r.returncode == 0, r.stderr[-3000:]
    ckpts = full / "checkpoints"
    expected = {"step_0000003.ckpt", "step_0000006.ckpt", "step_0000009.ckpt", "last.ckpt"}
    assert {p.name for p in ckpts.iterdir()} >= expected

    # An interrupted run: its last checkpoint is from step 6 (mid-epoch 0 of 8 steps... epoch 1), and its
    # metrics file already holds rows logged after that checkpoint, as when a job dies between checkpoints.
    (resumed / "checkpoints").mkdir(parents=True)
    shutil.copy(ckpts / "step_0000006.ckpt", resumed / "checkpoints" / "last.ckpt")
    shutil.copy(full / "metrics.csv", resumed / "metrics.csv")
    r = train([*SYNTH, f"run_dir={resumed}", "resume=auto"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from" in r.stdout

    a = torch.load(ckpts / "last.ckpt", map_location="cpu", weights_only=False)
    b = torch.load(resumed / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert a["global_step"] == b["global_step"] == 11
    for name, tensor in a["state_dict"].items():
        assert torch.equal(tensor, b["state_dict"][name]), name
    full_losses, resumed_losses = losses_by_step(read_metrics(full)), losses_by_step(read_metrics(resumed))
    assert sorted(full_losses) == list(range(11))
    assert resumed_losses == full_losses


def test_resume_at_an_epoch_boundary(train, tmp_path):
    args = [a for a in SYNTH if not a.startswith("checkpoint.")] + ["checkpoint.every_n_steps=8"]
    full, resumed = train_whole_and_resumed(train, args, tmp_path, step=8)  # 512 / 64 = 8 steps per epoch
    assert_same_last_checkpoint(full, resumed, global_step=11)
