"""train.py end to end in a subprocess, and exact resume."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import pytest
import torch
from conftest import TINY, assert_same_last_checkpoint, needs_cxx, train_whole_and_resumed


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


def test_mae_on_real_fashion_mnist(train, tmp_path):
    if not Path("/usr/share/datasets/fashion-mnist").is_dir():
        pytest.skip("Debian's dataset-fashion-mnist is not installed (apt-get install -y dataset-fashion-mnist)")
    run_dir = tmp_path / "fmnist"
    r = train(["objective=mae", "trainer.max_steps=6", "data.batch_size=32", "trainer.log_every_n_steps=2",
               "logger.wandb.mode=offline", "data.num_workers=1", f"run_dir={run_dir}"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert (run_dir / "config.yaml").is_file() and "mask_ratio: 0.75" in (run_dir / "config.yaml").read_text()
    assert (run_dir / "checkpoints" / "last.ckpt").is_file()
    assert list((run_dir / "pictures").glob("step_*.png"))
    assert list((run_dir / "wandb").glob("offline-run-*"))
    losses = losses_by_step(read_metrics(run_dir))
    assert sorted(losses) == [1, 3, 5] and all(0 < v < 10 for v in losses.values())
    ckpt = torch.load(run_dir / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=False)
    assert ckpt["global_step"] == 6


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


@needs_cxx
def test_compiled_run_resumes_an_eager_one_and_matches_it(train, tmp_path):
    """compile=true (TorchDynamo + Inductor, here on the CPU) trains the same model as eager mode, and compiles in
    place, so checkpoints have the same parameter names and either mode resumes the other's run."""
    args = [a for a in SYNTH if not a.startswith(("trainer.max_steps", "checkpoint."))]
    args += ["trainer.max_steps=6", "checkpoint.every_n_steps=3"]
    eager, compiled = tmp_path / "eager", tmp_path / "compiled"
    r = train([*args, f"run_dir={eager}"])
    assert r.returncode == 0, r.stderr[-3000:]
    (compiled / "checkpoints").mkdir(parents=True)
    shutil.copy(eager / "checkpoints" / "step_0000003.ckpt", compiled / "checkpoints" / "last.ckpt")
    inductor_cache = tmp_path / "inductor"  # a fresh cache: it fills only if Inductor really compiled the step
    r = train([*args, f"run_dir={compiled}", "resume=auto", "compile=true"],
              env={"TORCHINDUCTOR_CACHE_DIR": str(inductor_cache)})
    assert r.returncode == 0, r.stderr[-3000:]
    assert any(inductor_cache.rglob("*.py")), "compile=true ran without compiling anything"

    a, b = (torch.load(d / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
            for d in (eager, compiled))
    assert a["global_step"] == b["global_step"] == 6
    assert list(a["state_dict"]) == list(b["state_dict"])  # no `_orig_mod.` in the names
    for name, tensor in a["state_dict"].items():
        torch.testing.assert_close(b["state_dict"][name], tensor, rtol=1e-4, atol=1e-5, msg=name)
    eager_losses, compiled_losses = losses_by_step(read_metrics(eager)), losses_by_step(read_metrics(compiled))
    assert sorted(compiled_losses) == [3, 4, 5]
    for step, loss in compiled_losses.items():
        assert abs(loss - eager_losses[step]) < 1e-4 * abs(eager_losses[step]), step
