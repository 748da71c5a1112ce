"""BERT-MLM through train.py, and an image objective on a text backbone refused in one line."""
from __future__ import annotations

import csv
import math

import pytest
from conftest import train_in_process


def test_train_py_runs_mlm_end_to_end(tmp_path):
    run_dir = tmp_path / "run"
    r = train_in_process(["objective=mlm", "backbone=text_tiny", "trainer=cpu", "logger=csv", "data.num_workers=0",
                          "trainer.max_steps=3", "trainer.log_every_n_steps=1", "+trainer.val_check_interval=3",
                          "data.parts=[verb]", "data.batch_size=32", "data.tokenizer.vocab_size=2000",
                          f"data.tokenizer.cache_dir={tmp_path / 'tokenizers'}", f"run_dir={run_dir}"])
    if "WordNet not found" in r.stderr:
        pytest.skip("apt-get install -y wordnet-base")
    assert r.returncode == 0, r.stderr[-3000:]
    with (run_dir / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    train_losses = [float(r["train/loss"]) for r in rows if r.get("train/loss")]
    val_accuracy = [float(r["val/masked_accuracy"]) for r in rows if r.get("val/masked_accuracy")]
    assert len(train_losses) == 3 and all(0 < v < 2 * math.log(2000) for v in train_losses)
    assert val_accuracy and 0 <= val_accuracy[-1] <= 1
    val = [r for r in rows if r.get("val/perplexity")]  # exp of the split's mean loss, one value per validation
    assert val and math.isclose(float(val[-1]["val/perplexity"]), math.exp(float(val[-1]["val/loss"])), rel_tol=1e-5)
    assert list((tmp_path / "tokenizers").glob("*.json"))


def test_image_objective_on_a_text_backbone_is_one_line(train, tmp_path):
    r = train(["objective=mae", "backbone=text_small", "trainer=cpu", "logger=csv", "trainer.max_steps=1",
               f"run_dir={tmp_path / 'run'}"])
    assert r.returncode == 2 and "Traceback" not in r.stderr
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    message = "objective MAE needs image or audio backbone, but the chosen backbone is text"
    assert len(errors) == 1 and message in errors[0], \
        r.stderr[-2000:]
