"""Audio data modules: folder-per-class sounds, audio-caption manifests, the asterisk prompts, spoken WordNet and
WebDataset shards: fields and shapes, keyed crops, device-side spectrograms and their augmentation, unreadable files."""
from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
from torch.utils.data import default_collate

from selfsup.data import asterisk
from selfsup.data.audio import AUDIO_KEY, AudioFolder
from selfsup.data.audio_text import AudioTextManifest
from selfsup.data.shards import count_pairs
from selfsup.data.spectrogram import LogMel
from selfsup.data.webdataset_pairs import AudioWebDataset
from selfsup.errors import ConfigError, DataError

RATE = 8000


def tone(freq: float, seconds: float, rate: int = RATE) -> np.ndarray:
    t = np.arange(int(seconds * rate)) / rate
    return (0.5 * np.sin(2 * np.pi * freq * t)).astype(np.float32)


def write_folder(root: Path, per_class: int = 3) -> None:
    """Two classes of tones (low, high) of different lengths, as WAV and FLAC."""
    for c, freq in (("high", 2000.0), ("low", 300.0)):
        (root / c).mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            suffix = ".flac" if i % 2 else ".wav"
            sf.write(root / c / f"{c}{i}{suffix}", tone(freq, 0.3 + 0.4 * i), RATE)


def folder_module(root: Path, **kwargs) -> AudioFolder:
    settings = dict(root=str(root), val_fraction=0.0, sample_rate=16000, clip_seconds=0.5, n_mels=32, batch_size=2,
                    num_workers=0, views=[{"key": "view1"}, {"key": "view2"}])
    return AudioFolder(**{**settings, **kwargs})


def test_folder_batches_hold_clips_then_spectrograms_on_the_device(tmp_path):
    write_folder(tmp_path)
    data = folder_module(tmp_path)
    data.setup()
    assert data.class_names() == ["high", "low"]
    batch = default_collate([data.train_set[(0, i)] for i in range(len(data.train_set))])
    assert batch["view1"].shape == batch["view2"].shape == (6, 8000)  # 0.5 s at 16 kHz, resampled from 8 kHz
    assert batch["label"].tolist() == [0, 0, 0, 1, 1, 1]
    # 0.3 s sounds are padded with silence at the end; longer ones are cropped, each view at its own moment
    assert torch.all(batch["view1"][0, 4800:] == 0)
    assert not torch.equal(batch["view1"][4], batch["view2"][4])
    again = data.train_set[(0, 4)]
    assert torch.equal(again["view1"], batch["view1"][4])  # keyed by (seed, epoch, index): the same clip
    assert not torch.equal(data.train_set[(1, 4)]["view1"], again["view1"])  # another epoch, another moment
    out = data.on_device(dict(batch))
    assert out["view1"].shape == (6, 1, 32, 50)  # 8000 samples // hop 160
    mel = LogMel(sample_rate=16000, n_mels=32)(batch["view1"])
    torch.testing.assert_close(out["view1"], (mel - data.mel_mean) / data.mel_std)  # no augmentation by default


def test_augmentation_masks_and_gains_each_view(tmp_path):
    write_folder(tmp_path)
    augment = {"gain_db": 6.0, "freq_masks": 2, "freq_width": 4, "time_masks": 1, "time_width": 10}
    data = folder_module(tmp_path, augment=augment)
    data.setup()
    batch = default_collate([data.train_set[(0, i)] for i in range(6)])
    plain = (LogMel(sample_rate=16000, n_mels=32)(batch["view1"]) - data.mel_mean) / data.mel_std
    out = data.on_device(dict(batch))["view1"]
    masked = out == 0
    assert masked.any()
    for i in range(6):  # where not masked: the plain spectrogram shifted by one gain per sample, within +-6 dB
        shift = (out[i] - plain[i])[~masked[i]]
        assert shift.max() - shift.min() < 1e-4
        assert abs(shift.mean().item()) * data.mel_std <= 6.0 + 1e-4
        rows = masked[i, 0].all(dim=1).sum().item()  # whole mel bins masked: at most 2 bands of 4
        assert rows <= 8


def test_unreadable_files_are_skipped_and_counted_or_named(tmp_path):
    write_folder(tmp_path)
    (tmp_path / "low" / "broken.wav").write_bytes(b"RIFF not really a wave file")
    data = folder_module(tmp_path)
    data.setup()
    files = data.train_set.base.paths
    broken = files.index(str(tmp_path / "low" / "broken.wav"))
    sample = data.train_set[(0, broken)]
    assert sample["skipped"] == 1 and sample["view1"].shape == (8000,)
    strict = folder_module(tmp_path, on_error="raise")
    strict.setup()
    with pytest.raises(DataError, match="broken.wav"):
        strict.train_set[(0, broken)]


def test_eval_dataset_is_the_centre_clip_with_labels(tmp_path):
    write_folder(tmp_path / "train")
    write_folder(tmp_path / "val", per_class=1)
    data = folder_module(tmp_path)
    val = data.eval_dataset("val")
    assert len(val) == 2 and set(val[(0, 0)]) == {AUDIO_KEY, "label", "index", "key", "skipped"}
    long_clip = data.eval_dataset("train")[(0, 2)][AUDIO_KEY]  # 1.1 s: its centre 0.5 s
    assert torch.equal(long_clip, data.eval_dataset("train")[(5, 2)][AUDIO_KEY])
    batch = data.normalize({AUDIO_KEY: long_clip[None]})
    assert batch[AUDIO_KEY].shape == (1, 1, 32, 50)


def test_bad_settings_fail_in_one_line(tmp_path):
    with pytest.raises(ConfigError, match="data=audio_folder needs data.root"):
        AudioFolder(root=None)
    with pytest.raises(ConfigError, match="data.augment"):
        folder_module(tmp_path, augment={"freq_maks": 2})
    with pytest.raises(ConfigError, match="shorter than one STFT window"):
        folder_module(tmp_path, clip_seconds=0.01)
    with pytest.raises(DataError, match="no audio files"):
        (tmp_path / "empty" / "a").mkdir(parents=True)
        folder_module(tmp_path / "empty").setup()


def test_manifest_pairs_give_captions_and_name_missing_files(tmp_path):
    write_folder(tmp_path / "sounds")
    rows = [{"audio": f"sounds/{c}/{c}{i}.{'flac' if i % 2 else 'wav'}", "caption": f"a {c} tone number {i}"}
            for c in ("high", "low") for i in range(3)]
    (tmp_path / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    data = AudioTextManifest(manifest=str(tmp_path / "pairs.jsonl"), val_fraction=0.0, clip_seconds=0.5, n_mels=32,
                             batch_size=2, num_workers=0, context_length=12,
                             tokenizer={"vocab_size": 64, "min_frequency": 1, "cache_dir": str(tmp_path / "tok")})
    data.setup()
    sample = data.train_set[(0, 3)]
    assert sample["audio"].shape == (8000,) and sample["input_ids"].shape == (12,)
    assert data.tokenizer.decode(sample["input_ids"].tolist()) == "a low tone number 0"
    (tmp_path / "missing.jsonl").write_text(json.dumps({"audio": "nowhere.wav", "caption": "x"}) + "\n")
    with pytest.raises(DataError, match="audio .*nowhere.wav does not exist"):
        AudioTextManifest(manifest=str(tmp_path / "missing.jsonl")).setup()


@pytest.mark.skipif(not (asterisk.SOUNDS / "en").is_dir(),
                    reason="apt-get install -y asterisk-core-sounds-en-wav asterisk-core-sounds-en")
def test_asterisk_prompts_and_spoken_words(tmp_path):
    rows = asterisk.rows_of("en", "all")
    assert len(rows) == 568
    login = next(r for r in rows if r["name"] == "en/agent-loginok")
    assert login["caption"] == "Agent logged in." and login["label"] == "prompts"
    words = asterisk.rows_of("en", "words")
    assert [r["label"] for r in words][:3] == ["zero", "one", "two"] and len(words) == 36
    data = asterisk.Asterisk(subset="words", cache_dir=str(tmp_path), clip_seconds=0.5, num_workers=0,
                             tokenizer={"vocab_size": 64, "min_frequency": 1, "cache_dir": str(tmp_path / "tok")})
    assert len(data.eval_dataset("val")) == len(data.eval_dataset("train")) == 36  # an evaluation set
    assert data.class_names()[:3] == ["a", "b", "c"]


@pytest.mark.skipif(shutil.which("espeak-ng") is None or not Path("/usr/share/wordnet/data.noun").is_file(),
                    reason="apt-get install -y espeak-ng wordnet-base")
def test_spoken_wordnet_is_made_once_deterministically(tmp_path):
    from selfsup.data.spoken_wordnet import SpokenWordNet

    make = lambda: SpokenWordNet(num_glosses=6, voices=["en-us", "en-gb"], speeds=[150, 200],  # noqa: E731
                                 cache_dir=str(tmp_path), val_fraction=0.0, clip_seconds=0.5, num_workers=0,
                                 tokenizer={"vocab_size": 64, "min_frequency": 1, "cache_dir": str(tmp_path / "tok")})
    data = make()
    train, _ = data.manifests()
    rows = [json.loads(line) for line in Path(train).read_text().splitlines()]
    assert [(r["voice"], r["speed"]) for r in rows] == [("en-us", 150), ("en-gb", 150), ("en-us", 200),
                                                         ("en-gb", 200), ("en-us", 150), ("en-gb", 150)]
    wave, info = sf.read(rows[0]["audio"])
    assert len(wave) > 0.3 * sf.info(rows[0]["audio"]).samplerate  # a spoken definition lasts a while
    mtimes = [Path(r["audio"]).stat().st_mtime_ns for r in rows]
    assert make().manifests()[0] == train  # the same settings find the cache
    assert [Path(r["audio"]).stat().st_mtime_ns for r in rows] == mtimes  # nothing spoken again
    data.setup()
    assert data.class_names() == sorted({r["label"] for r in rows})


def write_shard(path: Path, n: int) -> None:
    """LAION-Audio-630K's layout: KEY.flac + KEY.json {"text": [captions]}; key 1's sound is corrupt."""
    with tarfile.open(path, "w") as tar:
        for i in range(n):
            buffer = io.BytesIO()
            sf.write(buffer, tone(200 + 100 * i, 0.6), RATE, format="FLAC")
            members = {f"{i:04d}.flac": buffer.getvalue() if i != 1 else b"not flac",
                       f"{i:04d}.json": json.dumps({"text": [f"tone {i}", "other"]}).encode()}
            for name, data in members.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))


def test_webdataset_shards_of_sounds_stream_with_json_captions(tmp_path):
    write_shard(tmp_path / "a.tar", 6)
    assert count_pairs(str(tmp_path / "a.tar"), (".flac", ".wav")) == 6
    data = AudioWebDataset(urls=str(tmp_path / "a.tar"), clip_seconds=0.5, n_mels=32, batch_size=5, num_workers=0,
                           shuffle_buffer=0, context_length=8,
                           tokenizer={"vocab_size": 64, "min_frequency": 1, "cache_dir": str(tmp_path / "tok")})
    data.check_before_training()
    batch = next(iter(data.train_dataloader()))
    assert batch["audio"].shape == (5, 8000) and int(batch["skipped"].sum()) == 1  # the corrupt sound
    decoded = [data.tokenizer.decode(ids.tolist()) for ids in batch["input_ids"]]
    assert decoded[:2] == ["tone 0", "tone 2"]
    assert data.on_device(batch)["audio"].shape == (5, 1, 32, 50)
