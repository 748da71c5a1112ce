"""Reliability by real fault injection: SIGKILL mid-run and mid-save, truncated checkpoints, NaN losses,
malicious checkpoints, corrupt images, read-only run folders, and config changes on resume."""
from __future__ import annotations

import csv
import io
import os
import random
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from conftest import ROOT, TINY, train_in_process
from PIL import Image

from selfsup.checkpoint_io import SAVE_DELAY_ENV, CheckpointError, atomic_save, load_checkpoint, newest_loadable
from selfsup.data.image_folder import ImageFolder
from selfsup.errors import DataError

STEPS = 12
BASE = ["objective=mae", *TINY, "trainer.log_every_n_steps=1", "trainer.limit_val_batches=2",
        "trainer.deterministic=true", f"trainer.max_steps={STEPS}", "checkpoint.every_n_steps=2"]
ARGS = [*BASE, "data=synthetic", "data.num_samples=512", "data.batch_size=32"]


def train_rows(run_dir: Path) -> dict[int, str]:
    with (run_dir / "metrics.csv").open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("train/loss")]
    steps = [int(r["step"]) for r in rows]
    assert len(steps) == len(set(steps)), f"duplicated rows: {sorted(steps)}"
    return {int(r["step"]): r["train/loss"] for r in rows}


def error_line(stderr: str) -> str:
    lines = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in stderr, stderr[-3000:]
    return lines[0]


def start_train(args: list[str], env: dict | None = None) -> subprocess.Popen:
    env = dict(os.environ, WANDB_MODE="offline", PYTHONWARNINGS="ignore", **(env or {}))
    return subprocess.Popen([sys.executable, str(ROOT / "train.py"), *args], cwd=ROOT, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def wait_until(condition, timeout: float = 180) -> None:
    deadline = time.time() + timeout
    while not condition():
        if time.time() > deadline:
            raise TimeoutError("condition not met in time")
        time.sleep(0.05)


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("reference")
    r = train_in_process([*ARGS, f"run_dir={run_dir}"])
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir


def assert_same_run(run_dir: Path, reference: Path) -> None:
    a = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")
    b = load_checkpoint(reference / "checkpoints" / "last.ckpt")
    assert a["global_step"] == b["global_step"] == STEPS
    for name, tensor in b["state_dict"].items():
        assert torch.equal(a["state_dict"][name], tensor), name
    assert train_rows(run_dir) == train_rows(reference)  # each step once, same values


def test_sigkill_at_a_random_step_then_resume_is_bit_identical(reference, tmp_path):
    run_dir = tmp_path / "run"
    kill_after = random.Random().randint(3, STEPS - 2)
    proc = start_train([*ARGS, f"run_dir={run_dir}"])
    wait_until(lambda: (run_dir / "metrics.csv").is_file() and len(train_rows(run_dir)) >= kill_after)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    r = train_in_process([*ARGS, f"run_dir={run_dir}", "resume=auto"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_run(run_dir, reference)


def test_sigkill_during_a_checkpoint_write_leaves_the_previous_one_whole(reference, tmp_path):
    run_dir = tmp_path / "run"
    proc = start_train([*ARGS, f"run_dir={run_dir}"], env={SAVE_DELAY_ENV: "60"})
    ckpts = run_dir / "checkpoints"
    # the first last.ckpt is written at step 2; the pause holds the rename when overwriting it at step 4
    wait_until(lambda: (ckpts / "last.ckpt").is_file() and any(ckpts.glob(".last.ckpt.*.tmp")))
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert load_checkpoint(ckpts / "last.ckpt")["global_step"] == 2  # the previous one, whole
    r = train_in_process([*ARGS, f"run_dir={run_dir}", "resume=auto"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert not list(ckpts.glob(".*.tmp"))
    assert_same_run(run_dir, reference)


def test_truncated_checkpoint_is_named_and_skipped(tmp_path, capsys):
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    atomic_save({"global_step": 4, "state_dict": {"w": torch.ones(3)}}, folder / "step_0000004.ckpt")
    time.sleep(0.02)
    atomic_save({"global_step": 6, "state_dict": {"w": torch.ones(1000)}}, folder / "last.ckpt")
    data = (folder / "last.ckpt").read_bytes()
    (folder / "last.ckpt").write_bytes(data[: len(data) // 2])
    path, step = newest_loadable(folder)
    assert path.name == "step_0000004.ckpt" and step == 4
    warning = capsys.readouterr().err.strip().splitlines()
    assert len(warning) == 1 and "skipping checkpoint" in warning[0] and "last.ckpt" in warning[0]


class CreatesFile:
    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.touch, (Path(self.path),))


def test_checkpoint_with_a_pickled_object_is_refused_and_never_runs(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.ckpt"
    torch.save({"global_step": 1, "state_dict": {}, "payload": CreatesFile(str(marker))}, evil)
    with pytest.raises(CheckpointError, match="refusing to load"):
        load_checkpoint(evil)
    r = train_in_process([*ARGS, f"run_dir={tmp_path / 'run'}", f"resume={evil}"])
    assert r.returncode == 2 and "refusing to load" in error_line(r.stderr)
    assert not marker.exists()


def nan_run(tmp_path: Path, extra: list[str], timeout: int = 600) -> subprocess.CompletedProcess:
    """train.py with the NaN-injecting objective of tests/targets.py."""
    pythonpath = os.pathsep.join(p for p in (str(ROOT / "tests"), os.environ.get("PYTHONPATH")) if p)
    return train_in_process([*ARGS, "objective._target_=targets.NaNMAE", f"run_dir={tmp_path}", *extra],
                            env={"PYTHONPATH": pythonpath}, timeout=timeout)


def test_nonfinite_stop_names_step_term_and_last_good_checkpoint(tmp_path):
    r = nan_run(tmp_path, ["+objective.nan_at_calls=[6]"])
    line = error_line(r.stderr)
    assert r.returncode == 2
    assert "non-finite loss at step 5" in line and "last good checkpoint" in line and "(step 4)" in line
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == 4
    assert all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())


def test_nonfinite_loss_on_one_process_stops_every_process_at_that_step(tmp_path):
    """Under DDP a NaN in one process's batch stops all of them at the same step, not one process leaving the
    others waiting in the next collective (a hang until the timeout)."""
    r = nan_run(tmp_path, ["+objective.nan_at_calls=[6]", "+objective.nan_on_rank=1", "trainer.devices=2",
                           "trainer.strategy=ddp", "data.batch_size=16"], timeout=300)
    lines = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-3000:]
    assert 1 <= len(lines) <= 2, lines  # the second process says so too, unless the first one's launcher ends it first
    assert all("non-finite loss at step 5" in line for line in lines), lines  # each process, the same step
    assert sum("last good checkpoint" in line and "(step 4)" in line for line in lines) == 1, lines
    assert load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")["global_step"] == 4


def test_nonfinite_skip_drops_the_update_and_counts_it(tmp_path):
    r = nan_run(tmp_path, ["+objective.nan_at_calls=[3,7]", "trainer.nonfinite=skip"])
    assert r.returncode == 0, r.stderr[-3000:]
    ckpt = load_checkpoint(tmp_path / "checkpoints" / "last.ckpt")
    assert ckpt["global_step"] == STEPS and all(torch.isfinite(t).all() for t in ckpt["state_dict"].values())
    with (tmp_path / "metrics.csv").open(newline="") as f:
        skipped = [float(r["train/skipped_steps"]) for r in csv.DictReader(f) if r.get("train/skipped_steps")]
    assert skipped[0] == 0.0 and skipped[-1] == 2.0 and skipped == sorted(skipped)


def test_nonfinite_skip_stops_after_too_many_in_a_row(tmp_path):
    r = nan_run(tmp_path, [f"+objective.nan_at_calls={list(range(3, 40))}", "trainer.nonfinite=skip",
                           "trainer.nonfinite_max_consecutive_skips=3"])
    assert r.returncode == 2 and "4 consecutive steps had a non-finite loss" in error_line(r.stderr)


def write_images(folder: Path, n: int) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        Image.new("RGB", (36, 36), (i * 20 % 255, 100, 50)).save(folder / f"good_{i}.png")


def corrupt_images(folder: Path) -> list[Path]:
    folder.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.new("RGB", (36, 36), (1, 2, 3)).save(buf, format="PNG")
    bad = {"truncated.png": buf.getvalue()[:60], "empty.png": b"", "not_an_image.jpg": b"hello, not a JPEG"}
    for name, data in bad.items():
        (folder / name).write_bytes(data)
    return [folder / name for name in bad]


def test_corrupt_images_are_skipped_and_counted(tmp_path):
    write_images(tmp_path / "cls_a", 6)
    corrupt_images(tmp_path / "cls_a")
    dm = ImageFolder(root=str(tmp_path), image_size=32, batch_size=3, num_workers=0)
    dm.setup()
    samples = [dm.train_set[(0, i)] for i in range(len(dm.train_set))]
    assert len(samples) == 9 and sum(s["skipped"] for s in samples) >= 3
    assert all(s["image"].shape == (3, 32, 32) for s in samples)

    strict = ImageFolder(root=str(tmp_path), image_size=32, batch_size=3, num_workers=0, on_error="raise")
    strict.setup()
    with pytest.raises(DataError, match=r"cannot read .*(truncated|empty|not_an_image)"):
        [strict.train_set[(0, i)] for i in range(len(strict.train_set))]


def test_training_on_a_folder_with_corrupt_images_logs_the_count(tmp_path):
    write_images(tmp_path / "data" / "cls_a", 10)
    corrupt_images(tmp_path / "data" / "cls_a")
    run_dir = tmp_path / "run"
    r = train_in_process([*BASE, "data=image_folder", f"data.root={tmp_path / 'data'}", "data.image_size=32",
                          "data.batch_size=4", "data.num_workers=1", "trainer.max_steps=6", f"run_dir={run_dir}"])
    assert r.returncode == 0, r.stderr[-3000:]
    with (run_dir / "metrics.csv").open(newline="") as f:
        counts = [float(r["data/skipped_samples"]) for r in csv.DictReader(f) if r.get("data/skipped_samples")]
    assert counts and counts[-1] >= 1


def test_a_folder_without_any_readable_image_fails_before_training(tmp_path):
    corrupt_images(tmp_path / "data" / "cls_a")
    r = train_in_process([*BASE, "data=image_folder", f"data.root={tmp_path / 'data'}", "data.image_size=32",
                          "data.batch_size=2", "data.num_workers=0", f"run_dir={tmp_path / 'run'}"])
    line = error_line(r.stderr)
    assert r.returncode == 2 and "no readable sample in image_folder" in line and str(tmp_path / "data") in line
    assert not (tmp_path / "run" / "checkpoints").exists()


def test_read_only_run_folder_is_refused_before_any_work(tmp_path):
    target = Path("/sys/selfsup-test-run")  # sysfs is read-only, even for root
    try:
        target.mkdir()
        target.rmdir()
        pytest.skip("/sys is writable here")
    except OSError:
        pass
    r = train_in_process([*ARGS, f"run_dir={target}"])
    assert r.returncode == 2 and f"run folder {target} is not writable" in error_line(r.stderr)


def test_run_folder_records_versions_and_refuses_a_different_model_on_resume(reference, tmp_path):
    info = (reference / "run_info.jsonl").read_text().splitlines()
    assert len(info) == 1
    for key in ('"torch"', '"lightning"', '"timm"', '"selfsup"', '"git_commit"'):
        assert key in info[0]
    run_dir = tmp_path / "run"
    assert train_in_process([*ARGS, "trainer.max_steps=2", f"run_dir={run_dir}"]).returncode == 0
    r = train_in_process([*ARGS, "trainer.max_steps=2", f"run_dir={run_dir}", "resume=auto", "backbone.depth=3"])
    assert r.returncode == 2 and "backbone.depth: 2 -> 3" in error_line(r.stderr)
    r = train_in_process([*ARGS, "trainer.max_steps=2", f"run_dir={run_dir}"])  # a new start would mix two runs
    assert r.returncode == 2 and f"run folder {run_dir} already holds a run" in error_line(r.stderr)
    r = train_in_process([*ARGS, "trainer.max_steps=4", f"run_dir={run_dir}", "resume=auto",
                          "objective.mask_ratio=0.5"])  # a longer budget, another mask ratio: allowed, and said
    assert r.returncode == 0, r.stderr[-3000:]
    (note,) = [line for line in r.stderr.splitlines() if line.startswith("note: resuming")]
    assert "2 changed key(s): objective.mask_ratio: 0.75 -> 0.5; trainer.max_steps: 2 -> 4" in note, note
    assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 4
    assert len((run_dir / "run_info.jsonl").read_text().splitlines()) == 2  # refused starts record nothing


def test_resume_from_another_run_checks_that_runs_config(tmp_path):
    """resume=OTHER_RUN compares with the other run's saved config (the new folder has none yet): another objective
    or depth is refused before anything is built, a decoder of another size in one line, a new mask ratio said."""
    other = tmp_path / "other"
    assert train_in_process([*ARGS, "trainer.max_steps=2", f"run_dir={other}"]).returncode == 0
    pythonpath = os.pathsep.join(p for p in (str(ROOT / "tests"), os.environ.get("PYTHONPATH")) if p)
    refused = {"backbone.depth=3": "backbone.depth: 2 -> 3",
               "objective._target_=targets.NaNMAE": "objective._target_: 'selfsup.objectives.mae.MAE' -> "
                                                    "'targets.NaNMAE'",
               "objective.decoder_dim=64": "does not fit the model this config builds"}
    for change, message in refused.items():
        new = tmp_path / change.split("=")[0]
        r = train_in_process([*ARGS, "trainer.max_steps=4", f"run_dir={new}", f"resume={other}", change],
                             env={"PYTHONPATH": pythonpath})
        line = error_line(r.stderr)
        assert r.returncode == 2 and message in line and str(other) in line, line
        assert not (new / "checkpoints").exists()
    new = tmp_path / "new"
    r = train_in_process([*ARGS, "trainer.max_steps=4", f"run_dir={new}", f"resume={other}",
                          "objective.mask_ratio=0.5"])
    assert r.returncode == 0, r.stderr[-3000:]
    (note,) = [line for line in r.stderr.splitlines() if line.startswith("note: resuming")]
    assert f"resuming {other} with" in note and "objective.mask_ratio: 0.75 -> 0.5" in note, note
    assert load_checkpoint(new / "checkpoints" / "last.ckpt")["global_step"] == 4


WANDB = ["logger.wandb.mode=offline"]


def wandb_losses(run_dir: Path) -> dict[int, str]:
    from selfsup.evaluation.comparison import read_wandb_rows

    rows = [r for r in read_wandb_rows(run_dir) if "train/loss" in r]
    steps = [int(r["step"]) for r in rows]
    assert len(steps) == len(set(steps)), f"duplicated wandb rows: {sorted(steps)}"
    return {int(r["step"]): round(r["train/loss"], 5) for r in rows}


def csv_losses(run_dir: Path) -> dict[int, float]:
    return {step: round(float(loss), 5) for step, loss in train_rows(run_dir).items()}


def kill_at_row(args: list[str], run_dir: Path, rows: int) -> None:
    proc = start_train(args)
    wait_until(lambda: (run_dir / "metrics.csv").is_file() and len(train_rows(run_dir)) >= rows)
    proc.send_signal(signal.SIGKILL)
    proc.wait()


def test_extending_a_finished_run_killed_and_resumed_equals_the_uninterrupted_extension(tmp_path):
    """A run of 5 steps (of 16 per epoch) extended to 12: killed at step 8 or so and resumed, it ends bit-identical to
    the extension without a kill; both stay in epoch 0 where the data stream stands, in one wandb run."""
    base = tmp_path / "base"
    assert train_in_process([*ARGS, *WANDB, "trainer.max_steps=5", f"run_dir={base}"]).returncode == 0
    state = load_checkpoint(base / "checkpoints" / "last.ckpt")
    assert state["global_step"] == 5 and state["epoch"] == 0 and state["Synthetic"] == {"epoch": 0, "batches_done": 5}
    whole, killed = tmp_path / "whole", tmp_path / "killed"
    for folder in (whole, killed):
        shutil.copytree(base, folder)
    extend = [*ARGS, *WANDB, f"trainer.max_steps={STEPS}", "resume=auto"]
    assert train_in_process([*extend, f"run_dir={whole}"]).returncode == 0
    kill_at_row([*extend, f"run_dir={killed}"], killed, 9)
    r = train_in_process([*extend, f"run_dir={killed}"])
    assert r.returncode == 0, r.stderr[-3000:]
    a, b = (load_checkpoint(d / "checkpoints" / "last.ckpt") for d in (killed, whole))
    assert a["global_step"] == b["global_step"] == STEPS and a["epoch"] == b["epoch"] == 0
    assert a["Synthetic"] == b["Synthetic"] == {"epoch": 0, "batches_done": STEPS}
    for name, tensor in b["state_dict"].items():
        assert torch.equal(a["state_dict"][name], tensor), name
    assert train_rows(killed) == train_rows(whole) and sorted(train_rows(whole)) == list(range(STEPS))
    with (killed / "metrics.csv").open(newline="") as f:
        assert {r["epoch"] for r in csv.DictReader(f) if r.get("train/loss")} == {"0"}
    assert wandb_losses(killed) == csv_losses(killed)
    ids = {p.name.rsplit("-", 1)[1] for p in (killed / "wandb").glob("offline-run-*")}
    assert len(list((killed / "wandb").glob("offline-run-*"))) == 3 and len(ids) == 1, ids


@pytest.mark.parametrize("case", ["killed before the first checkpoint", "every checkpoint corrupt"])
def test_a_restart_without_a_loadable_checkpoint_logs_each_step_once(reference, tmp_path, case):
    run_dir = tmp_path / "run"
    args = [*ARGS, *WANDB, f"run_dir={run_dir}"]
    if case == "killed before the first checkpoint":
        kill_at_row([*args, "checkpoint.every_n_steps=100"], run_dir, 3)
    else:
        kill_at_row(args, run_dir, 7)
        for path in (run_dir / "checkpoints").glob("*.ckpt"):
            path.write_bytes(b"")
    r = train_in_process([*args, "resume=auto"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "starting again from step 0" in r.stdout
    assert_same_run(run_dir, reference)
    assert wandb_losses(run_dir) == csv_losses(run_dir) == csv_losses(reference)


def test_sigterm_outside_slurm_saves_and_exits_143(tmp_path):
    """A scheduler other than SLURM (or a user's kill) must see the stopped run as unfinished: it used to exit 0."""
    run_dir = tmp_path / "run"
    env = dict(os.environ, WANDB_MODE="offline", PYTHONWARNINGS="ignore")
    env.pop("SLURM_JOB_ID", None)
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *ARGS, f"run_dir={run_dir}"], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: (run_dir / "metrics.csv").is_file() and len(train_rows(run_dir)) >= 2)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=300)
    assert proc.returncode == 143, stderr[-3000:]
    (line,) = [line for line in stderr.splitlines() if line.startswith("stopped: ")]
    assert "SIGTERM at step" in line and "resume=auto" in line
    step = load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"]
    assert 2 <= step < STEPS and f"step {step};" in line


def test_a_full_disk_is_named_with_the_space_needed_and_keeps_the_last_checkpoint(reference, tmp_path):
    """The step-4 checkpoint's temporary file is /dev/full (the kernel's ENOSPC on every write): the run stops with
    one line naming the file and the space it needs; step 2's checkpoint stays whole and the run resumes exactly."""
    run_dir = tmp_path / "run"
    ckpts = run_dir / "checkpoints"

    def fill_the_disk() -> None:  # once step 2 is saved (a start removes stale temporary files)
        wait_until(lambda: (ckpts / "step_0000002.ckpt").is_file(), timeout=300)
        (ckpts / f".step_0000004.ckpt.{os.getpid()}.tmp").symlink_to("/dev/full")

    injector = threading.Thread(target=fill_the_disk)
    injector.start()
    r = train_in_process([*ARGS, f"run_dir={run_dir}"])
    injector.join()
    line = error_line(r.stderr)
    assert r.returncode == 2 and "no space left on the device to write checkpoint" in line, line
    assert str(run_dir / "checkpoints" / "step_0000004.ckpt") in line and "MiB are free" in line, line
    needed = int(line.split("it needs about ")[1].split(" MiB")[0])
    assert needed >= sum(t.numel() * t.element_size() for t in load_checkpoint(
        reference / "checkpoints" / "last.ckpt")["state_dict"].values()) / 2**20
    assert load_checkpoint(run_dir / "checkpoints" / "last.ckpt")["global_step"] == 2
    assert not (run_dir / "checkpoints" / "step_0000004.ckpt").exists()
    r = train_in_process([*ARGS, f"run_dir={run_dir}", "resume=auto"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_run(run_dir, reference)


def test_a_full_disk_under_metrics_csv_is_one_line(tmp_path):
    from selfsup.run_loggers import RunCSVLogger

    logger = RunCSVLogger(str(tmp_path))
    logger.log_metrics({"train/loss": 1.0}, step=0)
    logger.experiment.metrics_file_path = "/dev/full"  # the kernel's ENOSPC on every write
    with pytest.raises(DataError, match="cannot write /dev/full .*No space left on device.*resume=auto"):
        logger.log_metrics({"train/loss": 0.5}, step=1)


def worker_pids(pid: int) -> list[int]:
    children = Path(f"/proc/{pid}/task/{pid}/children")
    return [int(p) for p in children.read_text().split()] if children.is_file() else []


def test_a_killed_data_worker_is_one_line_and_the_run_resumes(reference, tmp_path):
    run_dir = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, str(ROOT / "train.py"), *ARGS, "data.num_workers=2", f"run_dir={run_dir}"],
                            cwd=ROOT, env=dict(os.environ, WANDB_MODE="offline", PYTHONWARNINGS="ignore"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    wait_until(lambda: (run_dir / "metrics.csv").is_file() and len(train_rows(run_dir)) >= 3
               and worker_pids(proc.pid))
    os.kill(worker_pids(proc.pid)[0], signal.SIGKILL)
    _, stderr = proc.communicate(timeout=300)
    line = error_line(stderr)
    assert proc.returncode == 2 and "a data loader worker died" in line and "pid" in line, line
    assert "resume=auto" in line and "data.num_workers" in line, line
    r = train_in_process([*ARGS, f"run_dir={run_dir}", "resume=auto"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert_same_run(run_dir, reference)


def test_a_worker_dying_during_a_checkpoint_write_is_named_as_such_and_keeps_the_previous(tmp_path, monkeypatch):
    """The DataLoader's SIGCHLD handler raises wherever the main process is, a checkpoint write included: that
    error is the worker's (the run names it), not a failed write, and the previous checkpoint stays whole."""
    path = tmp_path / "last.ckpt"
    atomic_save({"global_step": 2, "state_dict": {"w": torch.ones(3)}}, path)
    before = path.read_bytes()

    def dies(*args, **kwargs):
        raise RuntimeError("DataLoader worker (pid 123) is killed by signal: Killed.")

    monkeypatch.setattr(torch, "save", dies)
    with pytest.raises(RuntimeError, match="DataLoader worker") as raised:
        atomic_save({"global_step": 4, "state_dict": {"w": torch.zeros(3)}}, path)
    assert not isinstance(raised.value, CheckpointError)
    assert path.read_bytes() == before and list(tmp_path.iterdir()) == [path]
