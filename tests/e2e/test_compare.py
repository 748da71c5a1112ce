"""compare.py: the table over seeds, the plots, offline wandb history, one-line errors."""
from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import ROOT, TINY, run_in_process, train_in_process
from helpers import write_run

from selfsup.evaluation.comparison import read_csv_rows, read_wandb_rows

PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def real_run(tmp_path_factory) -> Path:
    """One real tiny SimCLR run, logged to CSV and to an offline wandb run."""
    run_dir = tmp_path_factory.mktemp("real") / "simclr"
    r = train_in_process(["objective=simclr", "backbone=vit_tiny", "objective.projector_hidden_dim=32",
                          "objective.projector_dim=16", "optim=adamw", "data=synthetic", "data.num_samples=128",
                          "data.num_val_samples=32", "data.batch_size=32", "trainer.max_steps=8",
                          "trainer.log_every_n_steps=1",
                          "trainer.limit_val_batches=1",
                          *[a for a in TINY if not a.startswith("objective.decoder") and a != "logger=csv"],
                          "logger.wandb.mode=offline", "monitors.enabled=true", f"run_dir={run_dir}"])
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir


def compare(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return run_in_process(ROOT / "compare.py", args, cwd)


def test_table_over_seeds_and_plots(tmp_path, real_run):
    runs = tmp_path / "runs"
    write_run(runs / "a" / "mae_s0", "mae", 0, [0.4, 0.5, 0.5], [10.0, 20.0, 30.0])
    write_run(runs / "a" / "mae_s1", "mae", 1, [0.6, 0.8, 0.7], [12.0, 22.0, 32.0])
    write_run(runs / "b" / "byol_s0", "byol", 0, [0.3, 0.6, 0.8], [5.0, 10.0, 15.0])
    write_run(runs / "b" / "byol_s1", "byol", 1, [0.5, 0.7, 0.8], [5.0, 10.0, 15.0])
    shutil.copytree(real_run, runs / "real")

    r = compare([str(runs), "--metric", "knn_top1"], tmp_path)
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    health = "rankme | feature_std | alignment | uniformity"  # the real run's health monitor logged them
    assert "| objective | backbone | data | seeds | final knn_top1 | best knn_top1 | " + health + " | epochs | " \
           "wall time | samples/s | peak mem (GiB) |" in lines
    assert "| mae | vit_tiny | synthetic | 2 | 0.600 ± 0.141 | 0.650 ± 0.212 | – | – | – | – | 3.0 ± 0.0 | " \
           "31.0 ± 1.4 s | 100.5 ± 0.7 | – |" in lines
    assert "| byol | vit_tiny | synthetic | 2 | 0.800 ± 0.000 | 0.800 ± 0.000 | – | – | – | – | 3.0 ± 0.0 | " \
           "15.0 ± 0.0 s | 100.5 ± 0.7 | – |" in lines
    (real,) = [line.split(" | ") for line in lines if line.startswith("| simclr |")]
    assert real[1:4] == ["vit_tiny", "synthetic", "1"] and 0 <= float(real[4]) <= 1 and real[10] == "2.0"
    rank, spread, aligned, uniform = map(float, real[6:10])
    assert 1 <= rank <= 32 and 0 < spread < 1 and 0 <= aligned <= 4 and -4 <= uniform <= 0  # 32 val images
    out = runs / "compare"
    for name in ("val_knn_top1_vs_step", "val_knn_top1_vs_time", "loss_vs_step", "loss_vs_time", "val_rankme_vs_step",
                 "train_alignment_vs_step"):
        data = (out / f"{name}.png").read_bytes()
        assert data.startswith(PNG) and len(data) > 5000, name
    assert (out / "table.md").read_text().strip() == "\n".join(lines[2:2 + 5]).strip()


def test_offline_wandb_history_matches_the_csv(real_run, tmp_path):
    csv_rows = read_csv_rows(real_run / "metrics.csv")
    wandb_rows = read_wandb_rows(real_run)
    assert wandb_rows, "no history read from the offline wandb run"

    def losses(rows):
        return {int(r["step"]): round(r["train/loss"], 5) for r in rows if "train/loss" in r}

    assert losses(wandb_rows) == losses(csv_rows) and len(losses(csv_rows)) == 8
    knn = lambda rows: [round(r["val/knn_top1"], 5) for r in rows if "val/knn_top1" in r]  # noqa: E731
    assert knn(wandb_rows) == knn(csv_rows) and knn(csv_rows)

    # A run with only its wandb folder (logger.csv=false) is read from there.
    only_wandb = tmp_path / "runs" / "w"
    shutil.copytree(real_run, only_wandb)
    (only_wandb / "metrics.csv").unlink()
    from selfsup.evaluation.comparison import load_runs

    (run,) = load_runs(tmp_path / "runs")
    assert run.source == "wandb" and run.series("val/knn_top1")[1] == knn(csv_rows)


def test_missing_folder_or_no_runs_is_one_line(tmp_path):
    r = compare([str(tmp_path / "nothere")], tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: no folder") and r.stderr.count("\n") == 1, r.stderr
    (tmp_path / "empty").mkdir()
    r = compare([str(tmp_path / "empty")], tmp_path)
    assert r.returncode == 2 and r.stderr.startswith("error: no runs under") and r.stderr.count("\n") == 1, r.stderr
    write_run(tmp_path / "runs" / "x", "mae", 0, [0.5], [1.0])
    r = compare([str(tmp_path / "runs"), "--metric", "nope"], tmp_path)
    assert r.returncode == 2 and "no run logged metric 'nope'" in r.stderr and r.stderr.count("\n") == 1, r.stderr


def test_a_refused_resume_changes_nothing_compare_reads(real_run, tmp_path, train):
    """The user's command: resume a ViT-Tiny SimCLR run with backbone=vit_small. It is refused, and the run folder
    still says what the run was (Hydra used to rewrite RUN/.hydra before the refusal, and compare.py read it)."""
    run = tmp_path / "runs" / "simclr1"
    shutil.copytree(real_run, run)
    before = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    r = train(["objective=simclr", f"run_dir={run}", "resume=auto", "backbone=vit_small", "trainer=cpu",
               "logger=csv"])
    assert r.returncode != 0 and "refusing to resume" in r.stderr
    after = {p.relative_to(run): p.read_bytes() for p in run.rglob("*") if p.is_file()}
    assert after == before  # nothing written, nothing rewritten
    r = compare([str(tmp_path / "runs"), "--metric", "loss"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert "vit_tiny" in r.stdout and "vit_small" not in r.stdout
