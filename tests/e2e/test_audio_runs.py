"""Audio through train.py, eval.py, embed.py and export.py: CLAP on the asterisk prompts (online and offline
zero-shot on its spoken words, retrieval, kNN, the linear probe on a folder of sounds), resume, two processes, BYOL
and SimCLR on audio views, CNN14's export, modality errors."""
from __future__ import annotations

import csv
import json
import math
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from conftest import (
    ROOT,
    assert_same_last_checkpoint,
    assert_same_losses_and_weights,
    run_in_process,
    train_whole_and_resumed,
)

from selfsup.data import asterisk

needs_asterisk = pytest.mark.skipif(not (asterisk.SOUNDS / "en").is_dir(),
                                    reason="apt-get install -y asterisk-core-sounds-en-wav asterisk-core-sounds-en")
CPU = ["logger=csv", "trainer=cpu", "data.num_workers=0", "trainer.log_every_n_steps=1"]
TINY_CLAP = ["objective=clap", *CPU, "+backbone.depth=1", "data.batch_size=16", "data.clip_seconds=0.64",
             "monitors.max_train_samples=64", "monitors.max_val_samples=64"]


def logged(run: Path) -> set[str]:
    with (run / "metrics.csv").open() as f:
        return {k for row in csv.DictReader(f) for k, v in row.items() if v}


@pytest.fixture(scope="module")
def clap_run(tmp_path_factory):
    """`python train.py objective=clap` (its defaults: audio ViT, BERT-Tiny text tower, asterisk prompts, zero-shot
    on its spoken words), three steps."""
    from conftest import train_in_process

    if not (asterisk.SOUNDS / "en").is_dir():
        pytest.skip("apt-get install -y asterisk-core-sounds-en-wav asterisk-core-sounds-en")
    base = tmp_path_factory.mktemp("clap")
    env = {"SELFSUP_CACHE": str(base / "cache")}
    r = train_in_process([*TINY_CLAP, "trainer.max_epochs=1", "+trainer.limit_train_batches=3",
                          "trainer.limit_val_batches=1", f"run_dir={base / 'run'}"], env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    return base / "run", env


def test_clap_trains_and_monitors_zero_shot_retrieval_and_knn(clap_run):
    run, _ = clap_run
    keys = logged(run)
    assert {"train/loss", "train/audio_to_text_accuracy", "train/text_to_audio_accuracy", "train/logit_scale",
            "val/zero_shot_top1", "val/audio_to_text_R@1", "val/text_to_audio_R@10", "val/knn_top1"} <= keys
    assert not any("image" in k for k in keys)


def test_clap_run_evaluates_embeds_and_exports(clap_run, tmp_path):
    import timm

    from selfsup.assemble import load_pretrained
    from selfsup.data.spectrogram import LogMel

    run, env = clap_run
    for protocol, extra in [("zero_shot", ["data=asterisk_words"]), ("retrieval", [])]:  # knn: test_readme.py
        r = run_in_process(ROOT / "eval.py", [f"checkpoint={run}", f"protocol={protocol}", "logger=csv", *extra],
                           cwd=tmp_path, env=env)
        assert r.returncode == 0, r.stderr[-3000:]
    results = json.loads((run / "results.json").read_text())
    assert results["zero_shot"]["classes"] == 36 and results["zero_shot"]["val_samples"] == 36
    assert 0 <= results["zero_shot"]["val/zero_shot_top1"] <= results["zero_shot"]["val/zero_shot_top5"] <= 1
    assert 0 <= results["retrieval"]["val/audio_to_text_R@1"] <= results["retrieval"]["val/audio_to_text_R@10"] <= 1
    for split, count in (("train", 4), ("val", 2)):  # labelled sounds of your own, fitted to the run's clips
        for c, pitch in (("low", 300), ("high", 3000)):
            write_tones(tmp_path / "tones" / split / c, count, pitch)
    r = run_in_process(ROOT / "eval.py", [f"checkpoint={run}", "protocol=linear", "data=audio_folder",
                                          f"data.root={tmp_path / 'tones'}", "protocol.epochs=2", "logger=csv",
                                          f"out={tmp_path / 'linear'}"], cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    linear = json.loads((tmp_path / "linear" / "results.json").read_text())["linear"]
    assert 0 <= linear["val/linear_top1"] <= 1 and linear["val_samples"] == 4

    r = run_in_process(ROOT / "embed.py", [f"checkpoint={run}", f"out={tmp_path / 'e.npz'}", "split=val"],
                       cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    embedded = np.load(tmp_path / "e.npz")
    assert embedded["features"].shape[1] == 192 and len(embedded["labels"]) == len(embedded["features"])

    r = run_in_process(ROOT / "export.py", [f"checkpoint={run}", f"out={tmp_path / 'export'}"], cwd=tmp_path, env=env)
    assert r.returncode == 0, r.stderr[-3000:]
    config = json.loads((tmp_path / "export" / "config.json").read_text())
    audio = config["audio_input"]
    assert config["pretrained_cfg"]["input_size"] == [1, 64, 64] and audio["clip_seconds"] == 0.64
    model = timm.create_model(f"local-dir:{tmp_path / 'export'}", pretrained=True, num_classes=0).eval()
    waves = torch.randn(2, round(audio["clip_seconds"] * audio["sample_rate"]))
    mel = (LogMel(sample_rate=audio["sample_rate"], n_fft=audio["n_fft"], hop_length=audio["hop_length"],
                  n_mels=audio["n_mels"], f_min=audio["f_min"], f_max=audio["f_max"])(waves) - audio["mel_mean"]
           ) / audio["mel_std"]
    backbone = load_pretrained(run).backbone
    with torch.no_grad():
        torch.testing.assert_close(model(mel), backbone(mel), rtol=1e-4, atol=1e-5)
    assert "LogMel(" in (tmp_path / "export" / "README.md").read_text()  # the card's snippet makes spectrograms


@needs_asterisk
def test_clap_resumed_mid_run_matches_the_uninterrupted_run(train, tmp_path):
    args = [*TINY_CLAP, "monitors.enabled=false", "trainer.max_steps=4", "checkpoint.every_n_steps=2",
            "trainer.limit_val_batches=0", "data.augment.gain_db=6", "data.augment.freq_masks=1",
            "data.augment.freq_width=8", f"data.cache_dir={tmp_path / 'cache'}",
            f"data.tokenizer.cache_dir={tmp_path / 'tok'}"]
    whole, resumed = train_whole_and_resumed(train, args, tmp_path, step=2)
    assert_same_last_checkpoint(whole, resumed, global_step=4)


def write_tones(folder: Path, n: int, pitch: float) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    t = np.arange(8000) / 8000
    for i in range(n):
        sf.write(folder / f"{i}.wav", (0.3 * np.sin(2 * np.pi * (pitch + 20 * i) * t)).astype(np.float32), 8000)


def write_tone_pairs(folder: Path, n: int) -> Path:
    """n one-second tones with captions naming their pitch, and their manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    for i in range(n):
        t = np.arange(8000) / 8000
        sf.write(folder / f"t{i}.wav", (0.3 * np.sin(2 * np.pi * (200 + 150 * i) * t)).astype(np.float32), 8000)
        rows.append({"audio": f"t{i}.wav", "caption": f"a tone of pitch {i % 5} {'high' if i % 2 else 'low'}"})
    (folder / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    return folder / "pairs.jsonl"


def test_two_processes_with_half_batches_match_one_process(train, tmp_path):
    """Lightning DDP on CPU (gloo): CLAP gathers its negatives across processes as CLIP does, so 2 x B/2 is 1 x B."""
    manifest = write_tone_pairs(tmp_path / "tones", 16)
    args = [a for a in TINY_CLAP if a != "trainer=cpu"] + [
        "data=audio_manifest", f"data.manifest={manifest}", "data.val_fraction=0.0", "data.context_length=16",
        "data.tokenizer.vocab_size=64", "data.tokenizer.min_frequency=1",
        f"data.tokenizer.cache_dir={tmp_path / 'tok'}", "monitors.enabled=false", "trainer.accelerator=cpu",
        "trainer.precision=32-true", "trainer.max_steps=3", "trainer.limit_val_batches=0", "optim.name=sgd",
        "optim.lr=0.5"]
    single, ddp = tmp_path / "single", tmp_path / "ddp"
    r = train([*args, "data.batch_size=8", "trainer.devices=1", f"run_dir={single}"])
    assert r.returncode == 0, r.stderr[-3000:]
    r = train([*args, "data.batch_size=4", "trainer.devices=2", "trainer.strategy=ddp", f"run_dir={ddp}"])
    assert r.returncode == 0, r.stderr[-3000:]
    a = assert_same_losses_and_weights(single, ddp, steps=3)
    assert not torch.equal(a["objective.logit_scale"], torch.tensor(math.log(1 / 0.07)))  # it trained


@needs_asterisk
def test_byol_and_simclr_take_audio_views_and_cnn14_exports(train, tmp_path):
    """BYOL on CNN14 and SimCLR on the audio ViT with BYOL-A-style views (random crops, gain, SpecAugment masks);
    CNN14's export. (AudioMAE's masking and picture: tests/backbones/test_audio_backbones.py; its README command
    runs in test_readme.py.)"""
    from selfsup.assemble import load_exported_module, load_pretrained

    cache = [f"data.cache_dir={tmp_path / 'cache'}", f"data.tokenizer.cache_dir={tmp_path / 'tok'}",
             "monitors.enabled=false", "trainer.max_steps=2", "trainer.limit_val_batches=1", "data.batch_size=8"]
    views = ["data.augment.gain_db=6", "data.augment.freq_masks=2", "data.augment.freq_width=8",
             "data.augment.time_masks=2", "data.augment.time_width=16"]
    runs = {"byol": ["objective=byol", "data=asterisk", "backbone=cnn14", "backbone.width=4", *views],
            "simclr": ["objective=simclr", "data=asterisk", "backbone=audio_vit_tiny", "+backbone.depth=1", *views]}
    for name, args in runs.items():
        r = train([*CPU, *args, *cache, f"run_dir={tmp_path / name}"])
        assert r.returncode == 0, r.stderr[-3000:]
        assert "train/loss" in logged(tmp_path / name)
    r = run_in_process(ROOT / "export.py", [f"checkpoint={tmp_path / 'byol'}", f"out={tmp_path / 'cnn14'}"],
                       cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    exported, backbone = load_exported_module(tmp_path / "cnn14"), load_pretrained(tmp_path / "byol").backbone
    mel = torch.randn(2, 1, 64, 128)
    with torch.no_grad():
        torch.testing.assert_close(exported.eval()(mel), backbone(mel))
    assert json.loads((tmp_path / "cnn14" / "config.json").read_text())["audio_input"]["n_mels"] == 64


@pytest.mark.parametrize("override, message", [
    (["objective=clap", "backbone=vit_tiny"], "the chosen backbone takes image input, but the data is audio-text"),
    (["objective=simclr", "data=asterisk"], "the chosen backbone takes image input, but the data is audio-text"),
    (["objective=mlm", "data=asterisk"], "objective MLM needs text data, but the chosen data is audio-text"),
])
def test_audio_with_the_wrong_modality_fails_in_one_line(train, tmp_path, override, message):
    r = train([*CPU, *override, f"run_dir={tmp_path / 'run'}"])
    assert r.returncode == 2
    assert r.stderr.strip().splitlines()[-1].startswith("error: ") and message in r.stderr
