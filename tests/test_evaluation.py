"""Evaluation: kNN, linear probes, the online monitors, LoRA, export to timm, and eval.py / embed.py end to end."""
from __future__ import annotations

import csv
import importlib.util
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from conftest import ROOT, TINY, run_train
from selfsup.backbones.resnet import ResNet
from selfsup.backbones.vit import ViT
from selfsup.data.base import TensorImages
from selfsup.data.synthetic import Synthetic
from selfsup.errors import ConfigError
from selfsup.evaluation.features import FeatureSet, features
from selfsup.evaluation.knn import knn_accuracy, knn_votes
from selfsup.evaluation.linear import train_linear_probe

HAS_TEXT = (ROOT / "selfsup" / "backbones" / "text.py").is_file()
needs_text = pytest.mark.skipif(not HAS_TEXT, reason="the text backbone (selfsup/backbones/text.py) is not there yet")


def load_script(name: str):
    spec = importlib.util.spec_from_file_location(f"selfsup_cli_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class Unlabelled(Synthetic):
    """Synthetic images without labels: what a supervised protocol must refuse."""

    def load(self):
        train, val = super().load()
        return TensorImages(train.images, None), TensorImages(val.images, None)


# -- kNN -----------------------------------------------------------------------------------------------------
def brute_force_knn(bank: torch.Tensor, bank_labels: torch.Tensor, query: torch.Tensor, k: int, t: float,
                    num_classes: int) -> list[float]:
    """One query's class votes, by plain Python: cosine to every bank sample, sort, weight exp(cos / T)."""
    sims = []
    for j in range(len(bank)):
        a, b = query.double(), bank[j].double()
        sims.append((float(a @ b / (a.norm() * b.norm())), int(bank_labels[j])))
    sims.sort(key=lambda s: -s[0])
    votes = [0.0] * num_classes
    for sim, label in sims[:k]:
        votes[label] += math.exp(sim / t)
    return votes


def test_knn_equals_a_brute_force_reference():
    g = torch.Generator().manual_seed(0)
    bank, queries = torch.randn(60, 8, generator=g), torch.randn(25, 8, generator=g)
    bank_labels, query_labels = torch.randint(0, 7, (60,), generator=g), torch.randint(0, 7, (25,), generator=g)
    for k in (1, 5, 20, 200):  # 200 > bank size: every sample votes
        votes = knn_votes(queries, bank, bank_labels, 7, k, 0.07, chunk_size=4)
        reference = torch.tensor([brute_force_knn(bank, bank_labels, q, k, 0.07, 7) for q in queries], dtype=torch.float64)
        torch.testing.assert_close(votes.double(), reference, rtol=1e-4, atol=1e-6)
        voted = [sorted((c for c in range(7) if row[c] > 0), key=lambda c: -row[c]) for row in reference.tolist()]
        top1 = sum(v[:1] == [int(y)] for v, y in zip(voted, query_labels)) / 25
        top5 = sum(int(y) in v[:5] for v, y in zip(voted, query_labels)) / 25
        got = knn_accuracy(FeatureSet(bank, bank_labels, torch.arange(60)),
                           FeatureSet(queries, query_labels, torch.arange(25)), ks=[k])
        prefix = "knn" if k == 20 else f"knn{k}"
        assert got[f"val/{prefix}_top1"] == pytest.approx(top1)
        assert got[f"val/{prefix}_top5"] == pytest.approx(top5)


# -- linear probe --------------------------------------------------------------------------------------------
def separable(n: int, w: torch.Tensor, g: torch.Generator) -> FeatureSet:
    """Points labelled by the argmax of a linear map, kept only with a margin: linearly separable."""
    x = torch.randn(n, w.shape[0], generator=g) * 3 + 1
    top = (x @ w).topk(2, dim=1).values
    x = x[top[:, 0] - top[:, 1] > 1.0]
    return FeatureSet(x, (x @ w).argmax(1), torch.arange(len(x)))


def test_linear_probe_separates_linearly_separable_features():
    g = torch.Generator().manual_seed(0)
    w = torch.randn(16, 4, generator=g)
    train, val = separable(3000, w, g), separable(1000, w, g)
    _, metrics = train_linear_probe(train, val, num_classes=4, epochs=20, optimizer="sgd", lr=0.1)
    assert metrics["val/linear_top1"] > 0.95
    assert metrics["train/linear_top1"] > 0.95


# -- online monitors -----------------------------------------------------------------------------------------
def tiny_vit(**kwargs) -> ViT:
    return ViT("vit_tiny_patch16_224", img_size=16, in_chans=3, depth=1, **kwargs)


def test_online_probe_sends_no_gradient_to_the_backbone_and_its_state_round_trips():
    from selfsup.callbacks.online_monitors import LinearProbeMonitor
    from selfsup.evaluation.linear import LinearProbe, make_optimizer
    from selfsup.objectives.simclr import SimCLR

    torch.manual_seed(0)
    backbone = tiny_vit()
    objective = SimCLR(backbone, views=[{"key": "view1"}, {"key": "view2"}], projector_hidden_dim=16, projector_dim=8)
    batch = {"view1": torch.randn(6, 3, 16, 16), "view2": torch.randn(6, 3, 16, 16)}
    out = objective(backbone, batch)
    assert out.features is not None and out.features.shape == (6, backbone.num_features)
    assert not out.features.requires_grad
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in backbone.named_parameters() if p.grad is not None}
    assert grads

    def monitor() -> LinearProbeMonitor:
        m = LinearProbeMonitor(optimizer="adamw", lr=1e-2)
        m.probe = LinearProbe(backbone.num_features, 3)
        m.optimizer = make_optimizer("adamw", m.probe.parameters(), 1e-2)
        return m

    probe = monitor()
    labels = torch.tensor([0, 1, 2, 0, 1, 2])
    before = {n: p.clone() for n, p in backbone.named_parameters()}
    for _ in range(3):
        probe.train_step(out.features, labels)
    assert probe.probe.linear.weight.abs().sum() > 0  # the probe learned
    for name, p in backbone.named_parameters():
        assert torch.equal(p, before[name]), name
        if name in grads:
            assert torch.equal(p.grad, grads[name]), f"the probe changed the gradient of {name}"
        else:
            assert p.grad is None, name

    state = probe.state_dict()
    resumed = monitor()
    resumed.load_state_dict(state)
    for (name, a), b in zip(probe.probe.state_dict().items(), resumed.probe.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed.optimizer.state_dict()["state"][0]["step"] == probe.optimizer.state_dict()["state"][0]["step"]
    assert int(resumed._seen) == int(probe._seen) == 18


def test_features_dispatch_on_modality():
    vit = tiny_vit().eval()
    images = torch.randn(2, 3, 16, 16)
    assert torch.equal(features(vit, {"view1": images, "label": torch.zeros(2)}), vit(images))
    if HAS_TEXT:
        from selfsup.backbones.text import TextTransformer

        text = TextTransformer(vocab_size=50, dim=16, depth=1, heads=2, dropout=0.0, attn_dropout=0.0).eval()
        ids, mask = torch.randint(5, 50, (2, 7)), torch.ones(2, 7, dtype=torch.long)
        mask[1, 4:] = 0
        assert torch.equal(features(text, {"input_ids": ids, "attention_mask": mask}), text(ids, mask))


# -- LoRA ----------------------------------------------------------------------------------------------------
def test_lora_trains_only_its_parameters_and_merges_exactly():
    from selfsup.evaluation.finetune import Classifier
    from selfsup.evaluation.lora import LoRALinear, apply_lora, lora_parameters, merge_lora

    torch.manual_seed(0)
    backbone = tiny_vit()
    wrapped = apply_lora(backbone, rank=4, alpha=8)
    assert sorted(wrapped) == ["vit.blocks.0.attn.proj", "vit.blocks.0.attn.qkv"]
    model = Classifier(backbone, 3)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable == {"backbone.vit.blocks.0.attn.qkv.lora_A", "backbone.vit.blocks.0.attn.qkv.lora_B",
                         "backbone.vit.blocks.0.attn.proj.lora_A", "backbone.vit.blocks.0.attn.proj.lora_B",
                         "head.weight", "head.bias"}
    frozen = {n: p.clone() for n, p in model.named_parameters() if not p.requires_grad}
    images = torch.randn(8, 3, 16, 16)
    x0 = model(images).detach()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-2)
    for _ in range(3):
        loss = torch.nn.functional.cross_entropy(model(images), torch.arange(8) % 3)
        opt.zero_grad()
        loss.backward()
        opt.step()
    for name, p in model.named_parameters():
        if not p.requires_grad:
            assert torch.equal(p, frozen[name]), f"{name} changed"
    assert all(p.abs().sum() > 0 for p in lora_parameters(model))  # B moved away from zero
    assert not torch.allclose(model(images), x0)

    layer = backbone.vit.blocks[0].attn.qkv
    assert isinstance(layer, LoRALinear)
    expected = layer.base.weight + layer.scale * layer.lora_B @ layer.lora_A
    assert layer.scale == 2.0
    model.eval()
    with torch.no_grad():
        unmerged = model(images)
        assert merge_lora(model) == 2
        merged = model(images)
    assert type(backbone.vit.blocks[0].attn.qkv) is torch.nn.Linear
    torch.testing.assert_close(backbone.vit.blocks[0].attn.qkv.weight, expected.detach())
    torch.testing.assert_close(merged, unmerged, rtol=1e-5, atol=1e-5)


def test_lora_on_a_resnet_is_refused_with_the_fix():
    from selfsup.evaluation.lora import apply_lora

    with pytest.raises(ConfigError, match="protocol=finetune"):
        apply_lora(ResNet("resnet18", img_size=32, in_chans=3))


@needs_text
def test_lora_on_the_text_backbone_merges_exactly():
    from selfsup.backbones.text import TextTransformer
    from selfsup.evaluation.lora import apply_lora, merge_lora

    torch.manual_seed(0)
    text = TextTransformer(vocab_size=50, dim=16, depth=2, heads=2, dropout=0.0, attn_dropout=0.0)
    assert len(apply_lora(text, rank=2)) == 4
    for p in text.parameters():
        if p.requires_grad:
            torch.nn.init.normal_(p)  # B non-zero: the update matters
    ids, mask = torch.randint(5, 50, (3, 6)), torch.ones(3, 6, dtype=torch.long)
    with torch.no_grad():
        before = text.eval()(ids, mask)
        merge_lora(text)
        torch.testing.assert_close(text(ids, mask), before, rtol=1e-4, atol=1e-4)


# -- export --------------------------------------------------------------------------------------------------
def fake_run(tmp_path: Path, backbone_node: dict, backbone, data_node: dict | None = None) -> Path:
    """A run folder as train.py leaves it: config.yaml and checkpoints/last.ckpt with `backbone.*` weights."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    data_node = data_node or {"_target_": "selfsup.data.synthetic.Synthetic", "image_size": 32, "channels": 3,
                              "num_samples": 64, "num_val_samples": 32, "batch_size": 16, "num_workers": 0}
    OmegaConf.save(OmegaConf.create({"seed": 0, "backbone": backbone_node, "data": data_node,
                                     "objective": {"_target_": "selfsup.objectives.mae.MAE"}}), run / "config.yaml")
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    torch.save({"state_dict": state, "global_step": 7}, run / "checkpoints" / "last.ckpt")
    return run


def randomize(module: torch.nn.Module) -> None:
    """Weights and BatchNorm statistics unlike any fresh initialisation, so a failed load cannot pass."""
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for t in module.state_dict().values():
            if t.is_floating_point():
                t.copy_(torch.rand(t.shape, generator=g) * 0.2 + (0.9 if t.ndim == 1 else -0.1))


VIT_NODE = {"_target_": "selfsup.backbones.vit.ViT", "name": "vit_tiny_patch16_224", "img_size": 32, "in_chans": 3,
            "patch_size": "auto", "pos_embed": "sincos", "depth": 2}


def test_other_eval_data_is_fitted_to_the_backbone_and_its_pretraining_normalisation(tmp_path):
    """Images from another source reach the backbone as it was pretrained: its image size, its channel count and
    its data's mean and std (not the new source's own statistics)."""
    from selfsup.evaluation.checkpoint import Pretrained
    from selfsup.evaluation.data import eval_data_node

    backbone = ViT("vit_tiny_patch16_224", img_size=32, in_chans=3, depth=2)
    run_cfg = OmegaConf.create({"data": {"_target_": "selfsup.data.synthetic.Synthetic", "channels": 3,
                                         "mean": [0.1, 0.2, 0.3], "std": [0.4, 0.5, 0.6]}})
    pre = Pretrained(backbone, run_cfg, tmp_path / "last.ckpt", tmp_path, 0)
    other = OmegaConf.create({"_target_": "selfsup.data.fashion_mnist.FashionMNIST", "image_size": 28, "channels": 3})
    node = eval_data_node(other, pre)
    assert node.image_size == 32
    assert list(node.mean) == pytest.approx([0.1, 0.2, 0.3]) and list(node.std) == pytest.approx([0.4, 0.5, 0.6])
    with pytest.raises(ConfigError, match="the backbone takes 3-channel images but the data gives 1"):
        eval_data_node(OmegaConf.create({**other, "channels": 1}), pre)


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_vit_export_loads_in_timm_with_identical_features(tmp_path, pool):
    import timm

    from selfsup.evaluation.export import export

    node = {**VIT_NODE, "pool": pool}
    backbone = ViT("vit_tiny_patch16_224", img_size=32, in_chans=3, depth=2, pool=pool)
    randomize(backbone)
    run = fake_run(tmp_path, node, backbone)
    config = export(run, tmp_path / "export")
    weights = tmp_path / "export" / "model.safetensors"
    assert weights.is_file() and config["timm_kwargs"]["depth"] == 2
    model = timm.create_model(config["timm_name"], pretrained=True, num_classes=0,
                              pretrained_cfg_overlay=dict(file=str(weights)), **config["timm_kwargs"]).eval()
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(model(images), backbone.eval()(images), rtol=0, atol=1e-6)


@pytest.mark.parametrize("cifar_stem", [False, True])
def test_resnet_export_loads_in_timm_with_identical_features(tmp_path, cifar_stem):
    import timm

    from selfsup.evaluation.export import export, load_timm

    node = {"_target_": "selfsup.backbones.resnet.ResNet", "name": "resnet18", "img_size": 32, "in_chans": 3,
            "cifar_stem": cifar_stem}
    backbone = ResNet("resnet18", img_size=32, in_chans=3, cifar_stem=cifar_stem)
    randomize(backbone)
    run = fake_run(tmp_path, node, backbone)
    config = export(run, tmp_path / "export")
    assert config["cifar_stem"] is cifar_stem
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = backbone.eval()(images)
        torch.testing.assert_close(load_timm(tmp_path / "export")(images), expected, rtol=0, atol=1e-5)
        if not cifar_stem:  # the ImageNet stem: timm's own pretrained loading works as it is
            model = timm.create_model("resnet18", pretrained=True, num_classes=0, **config["timm_kwargs"],
                                      pretrained_cfg_overlay=dict(file=str(tmp_path / "export" / "model.safetensors")))
            torch.testing.assert_close(model.eval()(images), expected, rtol=0, atol=1e-5)


@needs_text
def test_text_export_keeps_weights_and_tokenizer(tmp_path):
    from selfsup.backbones.text import TextTransformer
    from selfsup.data.tokenizer import train_wordpiece
    from selfsup.evaluation.export import export, load_text_encoder

    corpus = [f"the quick brown fox number {i} jumps over the lazy dog" for i in range(50)]
    tokenizer = train_wordpiece(corpus, vocab_size=60, min_frequency=1)
    tokenizer.save(str(tmp_path / "tok.json"))
    kwargs = {"vocab_size": tokenizer.get_vocab_size(), "dim": 16, "depth": 1, "heads": 2, "dropout": 0.0,
              "attn_dropout": 0.0}
    text = TextTransformer(**kwargs)
    run = fake_run(tmp_path, {"_target_": "selfsup.backbones.text.TextTransformer", **kwargs}, text,
                   {"_target_": "selfsup.data.text.TextFiles", "root": str(tmp_path),
                    "tokenizer": {"path": str(tmp_path / "tok.json"), "lowercase": True}})
    export(run, tmp_path / "export")
    assert (tmp_path / "export" / "tokenizer.json").is_file()
    model, tok = load_text_encoder(tmp_path / "export")
    ids = torch.tensor([tok.encode("the quick brown fox").ids])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), text.eval()(ids))


# -- end to end: a tiny training run, its monitors, eval.py and embed.py ----------------------------------------
@pytest.fixture(scope="module")
def trained_run(tmp_path_factory) -> Path:
    run_dir = tmp_path_factory.mktemp("pretrain") / "mae"
    r = run_train(["objective=mae", "data=synthetic", "data.num_samples=256", "data.num_val_samples=64",
                   "data.batch_size=32", "trainer.max_steps=16", "trainer.log_every_n_steps=2",
                   "trainer.limit_val_batches=1", *TINY, "monitors.enabled=true", f"run_dir={run_dir}"])
    assert r.returncode == 0, r.stderr[-3000:]
    return run_dir


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
    assert (trained_run / "eval" / "linear" / "metrics.csv").is_file()


def test_eval_random_init_baseline_is_seeded_and_kept_apart(trained_run, tmp_path):
    from selfsup.evaluation.checkpoint import load_pretrained

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
    assert results["lora"]["lora_layers"] == 4  # qkv and proj of both blocks, merged


def test_eval_input_errors_are_one_line(trained_run, tmp_path, capsys):
    cli = load_script("eval")
    cases = [
        ([f"checkpoint={tmp_path / 'missing'}"], "no such file or folder"),
        (["protocol=knn"], "give checkpoint="),
        ([f"checkpoint={trained_run}", "protocol=svm"], "unknown protocol 'svm'; choose one of: finetune, knn, linear, lora"),
        ([f"checkpoint={trained_run}", "weights=imagenet"], "weights=imagenet is not one of trained, random"),
        ([f"checkpoint={trained_run}", "data=synthetic", "data._target_=test_evaluation.Unlabelled"], "has no labels"),
    ]
    for argv, message in cases:
        assert cli.main([*argv, "logger=csv"]) == 2, argv
        err = capsys.readouterr().err.strip()
        assert err.startswith("error: ") and message in err and "\n" not in err, err
    r = subprocess.run([sys.executable, str(ROOT / "eval.py"), "checkpoint=/nonexistent"], capture_output=True,
                       text=True, cwd=tmp_path, timeout=120)
    assert r.returncode == 2 and r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: "), r.stderr


@pytest.mark.parametrize("ext", [".npz", ".safetensors", ".pt"])
def test_embed_saves_features_in_index_order(trained_run, tmp_path, ext):
    from selfsup.evaluation.checkpoint import load_pretrained

    out = tmp_path / f"emb{ext}"
    assert load_script("embed").main([f"checkpoint={trained_run}", f"out={out}", "split=val"]) == 0
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
