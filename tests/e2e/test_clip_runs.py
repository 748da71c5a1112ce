"""CLIP through train.py and eval.py: defaults, zero-shot and retrieval, modality errors, resume, DDP, the
zero-shot monitor."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import pytest
import torch
from conftest import (
    ROOT,
    assert_same_last_checkpoint,
    assert_same_losses_and_weights,
    run_in_process,
    train_whole_and_resumed,
)
from helpers import write_images

from selfsup.data import openclipart

TINY_CLIP = ["objective=clip", "logger=csv", "trainer=cpu", "data.num_workers=0", "backbone=vit_tiny",
             "+backbone.depth=1", "backbone@objective.text_tower=text_tiny", "data.image_size=32",
             "data.batch_size=16", "trainer.log_every_n_steps=1"]


@pytest.mark.skipif(not openclipart.DEBIAN_ROOT.is_dir(), reason="Debian's openclipart-png/-svg are not installed")
def test_train_clip_with_its_defaults_then_zero_shot_and_retrieval_offline(train, tmp_path, openclipart_cache):
    run = tmp_path / "run"
    cache = [f"data.cache_dir={openclipart_cache}", f"data.tokenizer.cache_dir={openclipart_cache / 'tok'}"]
    r = train([*TINY_CLIP, *cache, "trainer.max_epochs=1", "+trainer.limit_train_batches=3",
               "trainer.limit_val_batches=1", "monitors.max_train_samples=64", "monitors.max_val_samples=64",
               f"run_dir={run}"])
    assert r.returncode == 0, r.stderr[-3000:]
    with (run / "metrics.csv").open() as f:
        rows = list(csv.DictReader(f))
    logged = {k for row in rows for k, v in row.items() if v}
    assert {"train/loss", "train/logit_scale", "train/image_to_text_accuracy", "val/loss", "val/zero_shot_top1",
            "val/zero_shot_top5", "val/image_to_text_R@1", "val/text_to_image_R@10", "val/knn_top1"} <= logged
    scales = [float(row["train/logit_scale"]) for row in rows if row.get("train/logit_scale")]
    assert scales[0] == pytest.approx(1 / 0.07, rel=1e-3) and all(s <= 100 for s in scales)

    for protocol, extra in [("zero_shot", ["data=fashion_mnist", "data.channels=3", "max_val_samples=100"]),
                            ("retrieval", [])]:
        r = run_in_process(ROOT / "eval.py", [f"checkpoint={run}", f"protocol={protocol}", "logger=csv", *extra],
                           cwd=tmp_path)
        assert r.returncode == 0, r.stderr[-3000:]
    own = json.loads((run / "results.json").read_text())["retrieval"]
    # The same pairs through another data module; copies of a drawing in two folders point to one file, as
    # openclipart counts them as one image (by file name) and a manifest by path.
    first_copy: dict[str, str] = {}
    rows = [json.loads(line) for line in next(openclipart_cache.glob("*/val.jsonl")).read_text().splitlines()]
    for row in rows:
        row["image"] = first_copy.setdefault(Path(row["image"]).name, row["image"])
    val_manifest = tmp_path / "val.jsonl"
    val_manifest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    r = run_in_process(ROOT / "eval.py", [f"checkpoint={run}", "protocol=retrieval", "logger=csv",
                                          "data=image_text_manifest", f"data.manifest={val_manifest}",
                                          f"data.val_manifest={val_manifest}", "batch_size=16",
                                          f"out={tmp_path / 'other'}"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    other = json.loads((tmp_path / "other" / "results.json").read_text())["retrieval"]
    assert {k: v for k, v in other.items() if k.startswith("val/")} == {k: v for k, v in own.items()
                                                                         if k.startswith("val/")}
    results = json.loads((run / "results.json").read_text())
    assert 0.0 <= results["zero_shot"]["val/zero_shot_top1"] <= results["zero_shot"]["val/zero_shot_top5"] <= 1.0
    assert results["zero_shot"]["classes"] == 10 and results["zero_shot"]["val_samples"] == 100
    assert results["retrieval"]["val_samples"] > 300  # the held-out openclipart pairs
    assert 0.0 <= results["retrieval"]["val/image_to_text_R@1"] <= results["retrieval"]["val/image_to_text_R@10"]


@pytest.mark.parametrize("override, message", [
    ("backbone=text_tiny", "objective CLIP needs image or audio backbone, but the chosen backbone is text"),
    ("data=fashion_mnist", "objective CLIP needs image-text or audio-text data, but the chosen data is image"),
])
def test_clip_with_the_wrong_modality_fails_in_one_line(train, tmp_path, override, message):
    r = train(["objective=clip", "logger=csv", "trainer=cpu", override, f"run_dir={tmp_path / 'run'}"])
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and message in r.stderr


def test_clip_resumed_mid_run_matches_the_uninterrupted_run(train, tmp_path):
    """Manifest pairs resume exactly: same batches, same augmentation, same text tower and temperature."""
    write_images(tmp_path / "images", 12)
    rows = [{"image": f"images/img{i}.png", "caption": f"square number {i % 5} of {'red' if i % 2 else 'clear'}"}
            for i in range(12)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [*TINY_CLIP, "data=image_text_manifest", f"data.manifest={tmp_path / 'pairs.jsonl'}",
            "data.val_fraction=0.0", "data.batch_size=4", "data.context_length=16", "data.tokenizer.vocab_size=64",
            "data.tokenizer.min_frequency=1", f"data.tokenizer.cache_dir={tmp_path / 'tok'}", "monitors.enabled=false",
            "trainer.max_steps=5", "checkpoint.every_n_steps=2"]
    whole, resumed = train_whole_and_resumed(train, args, tmp_path, step=2)
    assert_same_last_checkpoint(whole, resumed, global_step=5)


def test_two_processes_with_half_batches_match_one_process(train, tmp_path):
    """Lightning DDP on CPU (gloo): CLIP's gathered negatives make 2 x B/2 the same run as 1 x B."""
    write_images(tmp_path / "images", 16)
    rows = [{"image": f"images/img{i}.png", "caption": f"square number {i % 7} of {'red' if i % 2 else 'clear'}"}
            for i in range(16)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    args = [a for a in TINY_CLIP if a != "trainer=cpu"] + [
        "data=image_text_manifest", f"data.manifest={tmp_path / 'pairs.jsonl'}", "data.val_fraction=0.0",
        "data.context_length=16", "data.tokenizer.vocab_size=64", "data.tokenizer.min_frequency=1",
        f"data.tokenizer.cache_dir={tmp_path / 'tok'}", "monitors.enabled=false", "trainer.accelerator=cpu",
        "trainer.precision=32-true", "trainer.max_steps=3", "trainer.limit_val_batches=0",
        "optim.name=sgd", "optim.lr=0.5"]  # SGD: Adam would blow rounding noise of near-zero gradients up to lr
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    r = train([*args, "data.batch_size=8", "trainer.devices=1", f"run_dir={single}"])
    assert r.returncode == 0, r.stderr[-3000:]
    r = train([*args, "data.batch_size=4", "trainer.devices=2", "trainer.strategy=ddp", f"run_dir={ddp}"])
    assert r.returncode == 0, r.stderr[-3000:]
    assert "global batch 8" in r.stdout
    a = assert_same_losses_and_weights(single, ddp, steps=3)
    assert not torch.equal(a["objective.logit_scale"], torch.tensor(math.log(1 / 0.07)))  # it trained


FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")


@pytest.mark.skipif(not FASHION_MNIST.is_dir(), reason="apt-get install -y dataset-fashion-mnist")
def test_zero_shot_monitor_on_other_labelled_images_matches_offline_eval(train, tmp_path):
    """data@monitors.zero_shot.data=...: zero-shot on other labelled images during training (as open_clip does on
    ImageNet), fitted to the run's images; the end-of-training figure equals eval.py's on the final checkpoint."""
    write_images(tmp_path / "images", 12)
    rows = [{"image": f"images/img{i}.png", "caption": f"a shirt or a shoe number {i}"} for i in range(12)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    run = tmp_path / "run"
    r = train([*TINY_CLIP, "data=image_text_manifest", f"data.manifest={tmp_path / 'pairs.jsonl'}",
               "data.val_fraction=0.0", "data.batch_size=4", "data.context_length=16", "data.tokenizer.min_frequency=1",
               "data.tokenizer.vocab_size=64", f"data.tokenizer.cache_dir={tmp_path / 'tok'}", "trainer.max_epochs=1",
               "data@monitors.zero_shot.data=fashion_mnist", "monitors.max_val_samples=64", f"run_dir={run}"])
    assert r.returncode == 0, r.stderr[-3000:]
    with (run / "metrics.csv").open() as f:
        online = [row for row in csv.DictReader(f) if row.get("val/zero_shot_top1")]
    assert len(online) == 1 and not online[0].get("val/image_to_text_R@1")  # no held-out pairs: no retrieval

    r = run_in_process(ROOT / "eval.py", [f"checkpoint={run}", "protocol=zero_shot", "data=fashion_mnist",
                                          "data.channels=3", "max_val_samples=64", "logger=csv"], cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    offline = json.loads((run / "results.json").read_text())["zero_shot"]
    for k in ("val/zero_shot_top1", "val/zero_shot_top5"):
        assert float(online[0][k]) == pytest.approx(offline[k]), k
