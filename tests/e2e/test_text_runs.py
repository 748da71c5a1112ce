"""Text runs through train.py and embed.py: exact resume, and the run's own tokenizer."""
from __future__ import annotations

import csv
import shutil
from pathlib import Path

import numpy as np
import pytest
from conftest import ROOT, assert_same_last_checkpoint, run_in_process, train_in_process, train_whole_and_resumed
from helpers import STORY

from selfsup.data import tokenizer as tok
from selfsup.data import wordnet


def test_resumed_text_run_matches_an_uninterrupted_one(tmp_path):
    if not (wordnet.DEBIAN_DIR / "data.adv").is_file():
        pytest.skip("apt-get install -y wordnet-base")
    args = ["objective=mlm", "backbone=text_tiny", "trainer=cpu", "logger=csv", "data.num_workers=0",
            "data.parts=[adv]", "data.batch_size=32", "data.tokenizer.vocab_size=1000", "trainer.max_steps=6",
            "checkpoint.every_n_steps=3", "trainer.log_every_n_steps=1", "trainer.deterministic=true",
            f"data.tokenizer.cache_dir={tmp_path / 'tokenizers'}"]
    full, resumed = train_whole_and_resumed(train_in_process, args, tmp_path, step=3)
    assert_same_last_checkpoint(full, resumed, global_step=6)

    def losses(run_dir: Path) -> dict[int, str]:
        with (run_dir / "metrics.csv").open(newline="") as f:
            return {int(row["step"]): row["train/loss"] for row in csv.DictReader(f) if row.get("train/loss")}

    after = {step: loss for step, loss in losses(full).items() if step >= 3}
    assert sorted(losses(full)) == list(range(6)) and losses(resumed) == after


def test_a_text_run_keeps_its_tokenizer_for_resume_and_embedding(tmp_path):
    """RUN/tokenizer.json: with the tokenizer cache gone (another machine, a cleaned home folder), resume and
    embed.py read the run's own tokenizer instead of training one again; a different one on resume is refused."""
    if not (wordnet.DEBIAN_DIR / "data.adv").is_file():
        pytest.skip("apt-get install -y wordnet-base")
    cache, run = tmp_path / "tokenizers", tmp_path / "run"
    args = ["objective=mlm", "backbone=text_tiny", "trainer=cpu", "logger=csv", "data.num_workers=0",
            "data.parts=[adv]", "data.batch_size=32", "data.tokenizer.vocab_size=1000", "monitors.enabled=false",
            "checkpoint.every_n_steps=2", f"data.tokenizer.cache_dir={cache}", f"run_dir={run}"]
    r = train_in_process([*args, "trainer.max_steps=2"])
    assert r.returncode == 0, r.stderr[-3000:]
    (cached,) = cache.glob("*.json")
    assert tok.same_tokenization(tok.load_tokenizer(run / "tokenizer.json"), tok.load_tokenizer(cached))

    shutil.rmtree(cache)
    r = train_in_process([*args, "trainer.max_steps=4", "resume=auto"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "resuming from" in r.stdout
    r = run_in_process(ROOT / "embed.py", [f"checkpoint={run}", f"out={tmp_path / 'e.npz'}", "max_samples=64"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert np.load(tmp_path / "e.npz")["features"].shape == (64, 128)
    continued = tmp_path / "continued"  # resuming another run's checkpoint takes that run's tokenizer too
    r = train_in_process([*args[:-1], f"run_dir={continued}", "trainer.max_steps=6", f"resume={run}"])
    assert r.returncode == 0, r.stderr[-3000:]
    kept, continued_kept = (tok.load_tokenizer(d / "tokenizer.json") for d in (run, continued))
    assert tok.same_tokenization(kept, continued_kept)
    assert not cache.exists(), "a tokenizer was trained again instead of reading the run's"

    other = tok.train_wordpiece(STORY, vocab_size=100, min_frequency=1)
    other.save(str(tmp_path / "other.json"))
    r = train_in_process([*args, "trainer.max_steps=6", "resume=auto",
                          f"data.tokenizer.path={tmp_path / 'other.json'}"])
    assert r.returncode == 2 and "the run this one resumes was trained with the tokenizer" in r.stderr
