"""Supervised fine-tuning and LoRA of a text encoder through eval.py: a tiny MLM run, then labelled text (WordNet's
glosses with their 45 lexicographer classes, a CSV file with a label column)."""
from __future__ import annotations

import csv
import json

import pytest
from conftest import ROOT, run_in_process, train_in_process
from helpers import STORY

from selfsup.data import wordnet
from selfsup.evaluation.lora import ADAPTER_FILES

SMALL = ["logger=csv", "data.num_workers=0", "data.batch_size=16", "max_train_samples=64", "max_val_samples=32",
         "protocol.epochs=1", "protocol.warmup_epochs=0"]
GLOSSES = ["data=wordnet", "data.mode=lines", "data.parts=[verb]"]  # 15 of the 45 classes, 13,767 glosses


@pytest.fixture(scope="module")
def text_run(tmp_path_factory):
    """Two steps of BERT-Tiny MLM on WordNet's verb glosses: a text backbone and the run's own tokenizer."""
    if not (wordnet.DEBIAN_DIR / "data.verb").is_file():
        pytest.skip("apt-get install -y wordnet-base")
    folder = tmp_path_factory.mktemp("text")
    run = folder / "mlm"
    r = train_in_process(["objective=mlm", "backbone=text_tiny", "trainer=cpu", "logger=csv", "data.num_workers=0",
                          "data.parts=[verb]", "data.batch_size=16", "data.tokenizer.vocab_size=1000",
                          f"data.tokenizer.cache_dir={folder / 'tokenizers'}", "monitors.enabled=false",
                          "trainer.max_steps=2", f"run_dir={run}"])
    assert r.returncode == 0, r.stderr[-3000:]
    return run


def evaluate(run, out, *args: str):
    r = run_in_process(ROOT / "eval.py", [f"checkpoint={run}", f"out={out}", *SMALL, *args])
    assert r.returncode == 0, r.stderr[-3000:]
    return r.stdout, json.loads((out / "results.json").read_text())


def test_finetune_and_lora_of_a_text_encoder_on_wordnet_classes(text_run, tmp_path):
    out, results = evaluate(text_run, tmp_path, "protocol=finetune", *GLOSSES)
    assert "45 classes" in out and 0 <= results["finetune"]["val/finetune_top1"] <= 1
    out, results = evaluate(text_run, tmp_path, "protocol=lora", "protocol.rank=2", *GLOSSES)
    lora = results["lora"]
    assert lora["lora_layers"] == 4 and 0 <= lora["val/lora_top1"] <= 1  # qkv and proj of both blocks, merged
    assert lora["trainable_params"] == 2 * (2 * (128 + 3 * 128) + 2 * (128 + 128)) + 45 * 128 + 45
    adapter = tmp_path / "adapters" / "lora"
    assert lora["adapter"] == str(adapter) and sorted(p.name for p in adapter.iterdir()) == sorted(ADAPTER_FILES)
    assert sorted(json.loads((adapter / "adapter_config.json").read_text())["target_modules"]) == [
        f"blocks.{i}.attn.{name}" for i in range(2) for name in ("proj", "qkv")]
    assert set(results) == {"finetune", "lora"}


def test_finetune_on_a_csv_label_column_and_packed_text_refused_with_the_fix(text_run, tmp_path):
    table = tmp_path / "sentences.csv"
    with table.open("w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["sentence", "kind"])
        writer.writerows([f"{t} ({i})", "proverb" if "." in t[:-1] else "plain"] for i, t in enumerate(STORY * 8))
    data = ["data=text_files", f"data.root={table}", "data.format=csv", "data.text_field=sentence",
            "data.label_field=kind", "data.mode=lines", "data.val_fraction=0.25"]
    out, results = evaluate(text_run, tmp_path, "protocol=finetune", *data, "data.batch_size=8")
    assert "2 classes" in out and 0 <= results["finetune"]["val/finetune_top1"] <= 1

    r = run_in_process(ROOT / "eval.py", [f"checkpoint={text_run}", "protocol=finetune", "logger=csv",
                                          f"out={tmp_path / 'packed'}"])
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert r.returncode == 2 and len(errors) == 1 and "add data=wordnet data.mode=lines" in errors[0], r.stderr[-2000:]
