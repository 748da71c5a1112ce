"""Checkpoints are verified on load, by real fault injection: a bit-flip inside a tensor, random bytes over a
record, a zero-byte file and a text file named like a checkpoint. resume=auto skips them (and stays bit-exact);
resume=FILE, eval.py, embed.py and export.py refuse them in one line. A stop on a non-finite loss names only a
checkpoint whose weights and optimizer state are finite, and says when the model itself has diverged."""
from __future__ import annotations

import os
import random
import re
import shutil
import struct
import zipfile
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, run_in_process, train_in_process

from selfsup.checkpoint_io import CheckpointError, atomic_save, load_checkpoint, newest_loadable

STEPS = 6
ARGS = ["objective=mae", *TINY, "trainer.log_every_n_steps=1", "trainer.limit_val_batches=1",
        "trainer.deterministic=true", f"trainer.max_steps={STEPS}", "checkpoint.every_n_steps=2", "data=synthetic",
        "data.num_samples=256", "data.batch_size=32"]


def largest_records(path: Path, n: int) -> list[tuple[int, int]]:
    """(offset, size) of the data of the n largest records of a torch zip checkpoint (its tensors)."""
    with zipfile.ZipFile(path) as z:
        infos = sorted((i for i in z.infolist() if "/data/" in i.filename), key=lambda i: i.file_size, reverse=True)
    raw = path.read_bytes()
    spans = []
    for info in infos[:n]:
        name_len, extra_len = struct.unpack("<HH", raw[info.header_offset + 26:info.header_offset + 30])
        spans.append((info.header_offset + 30 + name_len + extra_len, info.file_size))
    return spans


def flip_a_bit(path: Path) -> None:
    offset, size = largest_records(path, 1)[0]
    data = bytearray(path.read_bytes())
    data[offset + size // 2] ^= 0x10
    path.write_bytes(bytes(data))


def random_bytes(path: Path) -> None:
    """Overwrite 64 bytes inside the second-largest tensor (the optimizer's moments are as large as the weights)."""
    offset, size = largest_records(path, 2)[1]
    data = bytearray(path.read_bytes())
    data[offset + size // 3:offset + size // 3 + 64] = random.Random(0).randbytes(64)
    path.write_bytes(bytes(data))


def zero_bytes(path: Path) -> None:
    path.write_bytes(b"")


def text_file(path: Path) -> None:
    path.write_text("this is not a checkpoint\n")


CORRUPTIONS = {"bit-flip": (flip_a_bit, "fails its digest check"),
               "random bytes": (random_bytes, "fails its digest check"),
               "zero bytes": (zero_bytes, "is empty (0 bytes)"),
               "text file": (text_file, "not a whole checkpoint file")}


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("checked") / "run"
    r = train_in_process([*ARGS, f"run_dir={run_dir}"])
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


@pytest.mark.parametrize("kind", CORRUPTIONS)
def test_a_corrupt_file_is_named_and_refused_on_load(run, tmp_path, kind):
    corrupt, message = CORRUPTIONS[kind]
    bad = tmp_path / "last.ckpt"
    shutil.copy(run / "checkpoints" / "last.ckpt", bad)
    corrupt(bad)
    with pytest.raises(CheckpointError, match=re.escape(message)) as e:
        load_checkpoint(bad)
    assert str(bad) in str(e.value) and "\n" not in str(e.value)


def test_the_digest_covers_every_value_not_only_tensors(tmp_path):
    path = tmp_path / "x.ckpt"
    atomic_save({"global_step": 3, "state_dict": {"w": torch.ones(4)}, "loops": {"epoch": 1}}, path)
    assert load_checkpoint(path)["global_step"] == 3
    checkpoint = torch.load(path, weights_only=True)
    checkpoint["loops"]["epoch"] = 2  # written with its old digest, as a tool editing the file would
    torch.save(checkpoint, path)
    with pytest.raises(CheckpointError, match="fails its digest check"):
        load_checkpoint(path)
    torch.save({"global_step": 3, "state_dict": {}}, path)  # no digest at all: not one selfsup wrote
    with pytest.raises(CheckpointError, match="carries no selfsup digest"):
        load_checkpoint(path)


def test_resume_auto_skips_corrupt_checkpoints_and_stays_bit_exact(run, tmp_path):
    """last.ckpt bit-flipped and step_6 emptied: the run resumes from step_4, names both, and ends as the
    uninterrupted run did."""
    resumed = tmp_path / "resumed"
    shutil.copytree(run, resumed)
    flip_a_bit(resumed / "checkpoints" / "last.ckpt")
    zero_bytes(resumed / "checkpoints" / f"step_{STEPS:07d}.ckpt")
    assert newest_loadable(resumed / "checkpoints")[1] == STEPS - 2
    r = train_in_process([*ARGS, f"run_dir={resumed}", "resume=auto"])
    assert r.returncode == 0, r.stderr[-3000:]
    skipped = [line for line in r.stderr.splitlines() if line.startswith("warning: skipping checkpoint")]
    assert len(skipped) == 2 and "last.ckpt fails its digest check" in skipped[0] and "is empty" in skipped[1]
    assert f"resuming from {resumed / 'checkpoints' / f'step_{STEPS - 2:07d}.ckpt'}" in r.stdout
    a, b = (load_checkpoint(d / "checkpoints" / "last.ckpt") for d in (resumed, run))
    assert a["global_step"] == b["global_step"] == STEPS
    for name, tensor in b["state_dict"].items():
        assert torch.equal(a["state_dict"][name], tensor), name
    for name, tensor in b["optimizer_states"][0]["state"][0].items():
        assert torch.equal(a["optimizer_states"][0]["state"][0][name], tensor), name


def command(name: str, bad: Path, tmp_path: Path) -> tuple[Path, list[str]]:
    if name == "resume=FILE":
        return ROOT / "train.py", [*ARGS, f"run_dir={tmp_path / 'new'}", f"resume={bad}"]
    if name == "eval.py":
        return ROOT / "eval.py", [f"checkpoint={bad}", "protocol=knn", "device=cpu"]
    if name == "eval.py RUN":
        return ROOT / "eval.py", [f"checkpoint={bad.parent.parent}", "protocol=knn", "device=cpu"]
    if name == "embed.py":
        return ROOT / "embed.py", [f"checkpoint={bad}", f"out={tmp_path / 'f.npz'}", "device=cpu"]
    return ROOT / "export.py", [f"checkpoint={bad}", f"out={tmp_path / 'export'}"]


@pytest.mark.parametrize("kind", CORRUPTIONS)
@pytest.mark.parametrize("name", ["resume=FILE", "eval.py", "eval.py RUN", "embed.py", "export.py"])
def test_commands_refuse_a_corrupt_checkpoint_in_one_line(run, tmp_path, kind, name):
    corrupt, message = CORRUPTIONS[kind]
    copy = tmp_path / "run"
    shutil.copytree(run, copy, ignore=shutil.ignore_patterns("step_*.ckpt"))
    bad = copy / "checkpoints" / "last.ckpt"
    corrupt(bad)
    script, args = command(name, bad, tmp_path)
    r = run_in_process(script, args, env={"WANDB_MODE": "offline"})
    line = error_line(r.stderr)
    assert r.returncode == 2 and str(bad) in line and message in line, line
    assert not (tmp_path / "new" / "checkpoints").exists() and not (tmp_path / "export").exists()
    assert not (tmp_path / "f.npz").exists() and not (copy / "results.json").exists()


def nan_run(run_dir: Path, extra: list[str]):
    """train.py with the NaN-injecting objective of tests/targets.py."""
    pythonpath = os.pathsep.join(p for p in (str(ROOT / "tests"), os.environ.get("PYTHONPATH")) if p)
    return train_in_process([*ARGS, "objective._target_=targets.NaNMAE", f"run_dir={run_dir}", *extra],
                            env={"PYTHONPATH": pythonpath})


def test_last_good_checkpoint_has_a_finite_optimizer_state(run, tmp_path):
    """A NaN in last.ckpt's optimizer state (with a valid digest: it was written so) makes the next update NaN;
    the stop must then name step_4, whose weights and moments are finite, not last.ckpt again."""
    copy = tmp_path / "run"
    shutil.copytree(run, copy)
    last = copy / "checkpoints" / "last.ckpt"
    checkpoint = load_checkpoint(last)
    checkpoint["optimizer_states"][0]["state"][0]["exp_avg"].view(-1)[0] = float("nan")
    atomic_save(checkpoint, last)
    shutil.copy(last, copy / "checkpoints" / f"step_{STEPS:07d}.ckpt")
    r = train_in_process([*ARGS, f"run_dir={copy}", f"trainer.max_steps={STEPS + 4}", "resume=auto"])
    line = error_line(r.stderr)
    assert r.returncode == 2 and "non-finite" in line, line
    good = copy / "checkpoints" / f"step_{STEPS - 2:07d}.ckpt"
    assert f"last good checkpoint: {good} (step {STEPS - 2})" in line and "lower optim.base_lr (now" in line, line


def test_a_diverged_model_is_called_so_not_resumed(tmp_path):
    """Huge but finite weights after one step at lr 1e4, non-finite ones after the second: resuming the step-1
    checkpoint would repeat that, so say so."""
    r = train_in_process([*ARGS, f"run_dir={tmp_path / 'run'}", "optim.lr=1e4", "checkpoint.every_n_steps=1"])
    line = error_line(r.stderr)
    assert r.returncode == 2 and "non-finite weights" in line and "at step 2" in line, line
    assert "the model diverged: its weights reach" in line and "resuming would repeat that" in line, line
    assert "last.ckpt, step 1)" in line and "optim.lr (now 10000.0)" in line, line
