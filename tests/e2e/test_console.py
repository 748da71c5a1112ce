"""A run starts quietly: one summary line (objective, backbone, data, batch, steps, precision, run folder) instead
of the full config and Lightning's start-up chatter; verbose=true prints everything."""
from __future__ import annotations

from conftest import TINY, run_train


def test_a_run_prints_a_summary_not_the_config(tmp_path):
    r = run_train(["objective=mae", *TINY, "trainer.max_steps=1", f"run_dir={tmp_path / 'quiet'}"])
    assert r.returncode == 0, r.stderr[-3000:]
    lines = [line for line in r.stdout.replace("\r", "\n").splitlines() if line.strip() and "it/s" not in line]
    assert len(lines) == 1, lines  # besides the progress bar
    summary = lines[0]
    for part in ("objective mae", "backbone vit_tiny", "data fashion_mnist", "global batch 256", "1 steps",
                 "precision 32-true", f"run folder {tmp_path / 'quiet'}"):
        assert part in summary, (part, summary)
    for chatter in ("GPU available", "Tip", "weights_only", "Total params", "srun"):
        assert chatter not in r.stdout + r.stderr, chatter
    assert (tmp_path / "quiet" / "config.yaml").read_text().count("\n") > 100  # the full config is in the folder


def test_verbose_prints_the_config_and_lightnings_lines(tmp_path):
    r = run_train(["objective=mae", *TINY, "trainer.max_steps=1", "verbose=true", f"run_dir={tmp_path / 'loud'}"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "mask_ratio: 0.75" in r.stdout and "Total params" in r.stdout + r.stderr
