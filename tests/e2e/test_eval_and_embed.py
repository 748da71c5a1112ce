"""eval.py and embed.py on a tiny training run: the online monitors, kNN, linear, fine-tuning, LoRA,
prompt tuning, the random-init baseline, input errors, saved features."""
from __future__ import annotations

import csv
import importlib.util
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from conftest import ROOT

from selfsup.data.synthetic import Synthetic


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"selfsup_cli_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_online_monitors_are_logged_and_checkpointed(trained_run):
    with (trained_run / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    knn = [r for r in rows if r.get("val/knn_top1")]
    linear = [r for r in rows if r.get("val/linear_top1")]
    assert [int(r["step"]) for r in knn] == [7, 15]  # every epoch (8 steps), at its last batch's step
    assert [int(r["epoch"]) for r in linear] == [0, 1]
    for r in knn:
        assert 0 <= float(r["val/knn_top1"]) <= float(r["val/knn_top5"]) <= 1 and r["val/knn200_top1"]
    assert all(0 <= float(r["train/linear_top1"]) <= 1 for r in linear)
    ckpt = torch.load(trained_run / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)
    (state,) = [v for k, v in ckpt["callbacks"].items() if "LinearProbeMonitor" in k]
    assert state["probe"]["linear.weight"].shape == (10, 192) and state["optimizer"]["state"]


def test_eval_knn_and_linear_write_results_json(trained_run):
    cli = load_script("eval")
    common = [f"checkpoint={trained_run}", "logger=csv"]
    assert cli.main([*common, "protocol=knn"]) == 0
    assert cli.main([*common, "protocol=linear", "protocol.epochs=5"]) == 0
    results = json.loads((trained_run / "results.json").read_text())
    assert set(results) == {"knn", "linear"}  # merged, one entry per protocol
    assert 0 <= results["knn"]["val/knn_top1"] <= 1 and "val/knn200_top5" in results["knn"]
    assert results["knn"]["step"] == 16 and results["knn"]["train_samples"] == 256
    assert 0 <= results["linear"]["val/linear_top1"] <= 1
    assert results["linear"]["trainable_params"] == 192 * 10 + 10  # the Linear alone: the BatchNorm has no affine
    assert (trained_run / "eval" / "linear" / "metrics.csv").is_file()


def test_eval_random_init_baseline_is_seeded_and_kept_apart(trained_run, tmp_path):
    from selfsup.assemble import load_pretrained

    trained = load_pretrained(trained_run).backbone.state_dict()
    first, again, other = (load_pretrained(trained_run, random_init=True, seed=s).backbone.state_dict()
                           for s in (3, 3, 4))
    assert all(torch.equal(first[k], again[k]) for k in first)  # the baseline is reproducible
    learned = [k for k in first if not torch.equal(first[k], other[k])]  # what the seed draws
    assert learned and all(not torch.equal(first[k], trained[k]) for k in learned)  # no checkpoint weights
    cli = load_script("eval")
    common = [f"checkpoint={trained_run}", "logger=csv", f"out={tmp_path}", "protocol=knn"]
    assert cli.main([*common, "weights=random"]) == 0 and cli.main(common) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert set(results) == {"knn", "knn@random_init"}  # the baseline never replaces the trained entry
    assert (results["knn@random_init"]["weights"], results["knn@random_init"]["step"]) == ("random", 0)
    assert (results["knn"]["weights"], results["knn"]["step"]) == ("trained", 16)
    assert (tmp_path / "eval" / "knn@random_init" / "metrics.csv").is_file()


def test_eval_finetune_and_lora_run_end_to_end(trained_run, tmp_path):
    cli = load_script("eval")
    common = [f"checkpoint={trained_run / 'checkpoints' / 'last.ckpt'}", "logger=csv", f"out={tmp_path}",
              "protocol.epochs=1", "protocol.warmup_epochs=0"]
    assert cli.main([*common, "protocol=finetune"]) == 0
    assert cli.main([*common, "protocol=lora", "protocol.rank=2"]) == 0
    results = json.loads((tmp_path / "results.json").read_text())
    assert 0 <= results["finetune"]["val/finetune_top1"] <= 1
    from selfsup.assemble import load_pretrained

    everything = sum(p.numel() for p in load_pretrained(trained_run).backbone.parameters() if p.requires_grad)
    assert results["finetune"]["trainable_params"] == everything + 192 * 10 + 10  # the backbone and the head
    assert results["lora"]["lora_layers"] == 4  # qkv and proj of both blocks, merged
    assert (tmp_path / "adapters" / "lora" / "adapter_model.safetensors").is_file()  # peft's format, before merging


def test_eval_prompt_tuning_runs_end_to_end(trained_run, tmp_path):
    cli = load_script("eval")
    assert cli.main([f"checkpoint={trained_run}", "logger=csv", f"out={tmp_path}", "protocol=prompt_tuning",
                     "protocol.num_prompts=4", "protocol.depth=deep", "protocol.epochs=1", "protocol.warmup_epochs=0",
                     "max_train_samples=64", "max_val_samples=32"]) == 0
    entry = json.loads((tmp_path / "results.json").read_text())["prompt_tuning"]
    assert 0 <= entry["val/prompt_tuning_top1"] <= entry["val/prompt_tuning_top5"] <= 1
    assert {"val/prompt_tuning_loss", "val/prompt_tuning_best_top1", "train/prompt_tuning_loss"} <= set(entry)
    prompts = 2 * 4 * 192  # deep: a set of 4 for each of the 2 blocks
    assert (entry["prompt_params"], entry["trainable_params"]) == (prompts, prompts + 192 * 10 + 10)  # + the head
    assert entry["backbone_params"] > 10 * entry["trainable_params"] and entry["protocol"]["depth"] == "deep"
    assert (tmp_path / "eval" / "prompt_tuning" / "metrics.csv").is_file()
    from safetensors.torch import load_file

    saved = load_file(tmp_path / "adapters" / "prompt_tuning" / "prompts.safetensors")  # what was evaluated
    assert saved["prompts"].shape == (2, 4, 192) and saved["head.weight"].shape == (10, 192)


def test_eval_input_errors_are_one_line(trained_run, tmp_path, capsys):
    cli = load_script("eval")
    cases = [
        ([f"checkpoint={tmp_path / 'missing'}"], "no such file or folder"),
        (["protocol=knn"], "give checkpoint="),
        ([f"checkpoint={trained_run}", "protocol=svm"],
         "unknown protocol 'svm'; choose one of: finetune, knn, linear, lora"),
        ([f"checkpoint={trained_run}", "weights=imagenet"], "weights=imagenet is not one of trained, random"),
        ([f"checkpoint={trained_run}", "data=synthetic", "data._target_=targets.Unlabelled"], "has no labels"),
    ]
    for argv, message in cases:
        assert cli.main([*argv, "logger=csv"]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err
    r = subprocess.run([sys.executable, str(ROOT / "eval.py"), "checkpoint=/nonexistent"], capture_output=True,
                       text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: "), r.stderr


@pytest.mark.parametrize("ext", [".npz", ".safetensors", ".pt"])
def test_embed_saves_features_in_index_order(trained_run, tmp_path, ext, capsys):
    from selfsup.assemble import load_pretrained

    out = tmp_path / f"emb{ext}"
    assert load_script("embed").main([f"checkpoint={trained_run}", f"out={out}", "split=val"]) == 0
    assert "embedding: 100%" in capsys.readouterr().err  # a progress bar while it runs
    if ext == ".npz":
        data = {k: torch.from_numpy(v) for k, v in np.load(out).items()}
    elif ext == ".safetensors":
        from safetensors.torch import load_file

        data = load_file(str(out))
    else:
        data = torch.load(out, weights_only=True)
    assert data["features"].shape == (64, 192)
    assert torch.equal(data["index"], torch.arange(64)) and torch.equal(data["labels"], torch.arange(64) % 10)
    if ext == ".npz":  # the first samples' features are the backbone's on the eval view of those samples
        pre = load_pretrained(trained_run)
        dm = Synthetic(num_samples=256, num_val_samples=64, image_size=32, channels=3, num_workers=0)
        batch = dm.normalize(next(iter(dm.eval_dataloader("val", batch_size=4))))
        with torch.no_grad():
            torch.testing.assert_close(data["features"][:4], pre.backbone(batch["image"]), rtol=1e-4, atol=1e-5)
