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


def test_verbose_prints_the_config(train, tmp_path):
    """verbose=true prints the full config as the run starts (here one that then stops on a batch larger than
    its data, so that no training is needed to see it)."""
    r = train(["objective=mae", *TINY, "trainer.max_steps=1", "verbose=true", "data=synthetic",
               "data.num_samples=40", "data.batch_size=64", f"run_dir={tmp_path / 'loud'}"])
    assert r.returncode == 2 and "mask_ratio: 0.75" in r.stdout and "num_samples: 40" in r.stdout
