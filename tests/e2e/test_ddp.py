"""DDP correctness on CPU: one process with global batch B equals two processes with B/2 each."""
from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from conftest import TINY


def common_args(objective: str) -> list[str]:
    tiny = [a for a in TINY if a != "trainer=cpu" and (objective == "mae" or not a.startswith("objective.decoder"))]
    return tiny + COMMON


COMMON = [
    "data=synthetic", "data.num_samples=512", "trainer.accelerator=cpu", "trainer.precision=32-true",
    "trainer.log_every_n_steps=1", "trainer.max_steps=4", "trainer.limit_val_batches=0",
]


def losses(run_dir: Path) -> list[float]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        return [float(r["train/loss"]) for r in csv.DictReader(f) if r.get("train/loss")]


# SimCLR on a ViT without BatchNorm: torch's SyncBatchNorm needs GPUs, and per-process BN statistics would
# differ from one process's. What this checks is NT-Xent's negatives gathered from both processes.
# DINO's and DINOv2's global statistics (the EMA centre, Sinkhorn-Knopp) are checked across two processes in
# tests/objectives/test_centering.py, VICReg's, Barlow Twins' and MoCo v3's in test_vicreg_barlow_mocov3.py.
OBJECTIVE_ARGS = {
    "mae": [],
    "simclr": ["backbone=vit_tiny", "objective.projector_bn=false", "objective.projector_hidden_dim=64",
               "objective.projector_dim=32", "optim=adamw"],
}


@pytest.mark.parametrize("objective", sorted(OBJECTIVE_ARGS))
def test_two_processes_with_half_batches_match_one_process(train, tmp_path, objective):
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    args = [f"objective={objective}", *OBJECTIVE_ARGS[objective], *common_args(objective)]
    r = train([*args, "data.batch_size=64", "trainer.devices=1", f"run_dir={single}"])
    assert r.returncode == 0, r.stderr[-3000:]
    r = train([*args, "data.batch_size=32", "trainer.devices=2", "trainer.strategy=ddp", f"run_dir={ddp}"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "global batch 64" in r.stdout

    torch.testing.assert_close(torch.tensor(losses(ddp)), torch.tensor(losses(single)), rtol=1e-5, atol=1e-6)
    a = torch.load(single / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    b = torch.load(ddp / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert a["global_step"] == b["global_step"] == 4
    # Weights agree to ~1e-7, except attention key biases: their true gradient is zero (softmax ignores a
    # constant added to every key), so AdamW normalises rounding noise into steps of up to lr (~4e-5 here).
    for name, tensor in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], tensor, rtol=0, atol=5e-6, msg=name)
