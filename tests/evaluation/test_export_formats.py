"""Export: ViT, ResNet and text backbones load in timm (or as a text encoder) with identical features."""
from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import needs_text
from omegaconf import OmegaConf

from selfsup.backbones.resnet import ResNet
from selfsup.backbones.vit import ViT
from selfsup.checkpoint_io import atomic_save

MAE = {"_target_": "selfsup.objectives.mae.MAE"}
SIMCLR = {"_target_": "selfsup.objectives.simclr.SimCLR", "views": [{"key": "view1"}, {"key": "view2"}]}
MLM = {"_target_": "selfsup.objectives.mlm.MLM"}


def fake_run(tmp_path: Path, backbone_node: dict, backbone, data_node: dict | None = None,
             objective: dict = MAE) -> Path:
    """A run folder as train.py leaves it: config.yaml and checkpoints/last.ckpt with `backbone.*` weights (the
    objective is rebuilt, to ask it for its evaluation model, but its own weights are not needed)."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    data_node = data_node or {"_target_": "selfsup.data.synthetic.Synthetic", "image_size": 32, "channels": 3,
                              "num_samples": 64, "num_val_samples": 32, "batch_size": 16, "num_workers": 0}
    OmegaConf.save(OmegaConf.create({"seed": 0, "backbone": backbone_node, "data": data_node,
                                     "objective": objective}), run / "config.yaml")
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    atomic_save({"state_dict": state, "global_step": 7}, run / "checkpoints" / "last.ckpt")
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


@pytest.mark.parametrize("pool", ["cls", "mean"])
def test_vit_export_loads_in_timm_with_identical_features(tmp_path, pool):
    import timm

    from selfsup.commands.export_backbone import export

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

    from selfsup.commands.export_backbone import export
    from selfsup.evaluation.export_formats import load_timm

    node = {"_target_": "selfsup.backbones.resnet.ResNet", "name": "resnet18", "img_size": 32, "in_chans": 3,
            "cifar_stem": cifar_stem}
    backbone = ResNet("resnet18", img_size=32, in_chans=3, cifar_stem=cifar_stem)
    randomize(backbone)
    run = fake_run(tmp_path, node, backbone, objective=SIMCLR)
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
    from tokenizers import Tokenizer

    from selfsup.backbones.text_transformer import TextTransformer
    from selfsup.commands.export_backbone import export
    from selfsup.data.text_datasets import TokenArrays
    from selfsup.data.tokenizer import token_ids_of, train_wordpiece
    from selfsup.evaluation.export_formats import load_text_encoder

    corpus = [f"the quick brown fox number {i} jumps over the lazy dog" for i in range(50)]
    tokenizer = train_wordpiece(corpus, vocab_size=60, min_frequency=1)
    tokenizer.save(str(tmp_path / "tok.json"))
    kwargs = {"vocab_size": tokenizer.get_vocab_size(), "dim": 16, "depth": 1, "heads": 2, "dropout": 0.0,
              "attn_dropout": 0.0}
    text = TextTransformer(**kwargs)
    run = fake_run(tmp_path, {"_target_": "selfsup.backbones.text_transformer.TextTransformer", **kwargs}, text,
                   {"_target_": "selfsup.data.text_corpora.TextFiles", "root": str(tmp_path),
                    "tokenizer": {"path": str(tmp_path / "tok.json"), "lowercase": True}}, objective=MLM)
    export(run, tmp_path / "export")
    assert (tmp_path / "export" / "tokenizer.json").is_file()
    model, tok = load_text_encoder(tmp_path / "export")
    # the ids training gave this text ([CLS] text [SEP]: a lines-mode sample), from the exported file alone
    trained = TokenArrays.encode(tokenizer, ["the quick brown fox"])
    info = token_ids_of(tokenizer)
    expected = [info.cls_id, *trained.tokens.tolist(), info.sep_id]
    for loaded in (tok, Tokenizer.from_file(str(tmp_path / "export" / "tokenizer.json"))):
        assert loaded.encode("the quick brown fox").ids == expected
    pair = tok.encode("the fox", "the dog")
    assert pair.ids[0] == info.cls_id and pair.ids.count(info.sep_id) == 2 and pair.type_ids[-1] == 1
    ids = torch.tensor([expected])
    with torch.no_grad():
        torch.testing.assert_close(model(ids), text.eval()(ids))


def test_a_pooled_then_normalised_timm_vit_exports_and_the_printed_call_loads_it(tmp_path, capsys):
    """timm ViTs whose default pools first and normalises after (fc_norm, the `gap` models) crashed the export;
    and the printed load call must give timm the input size and normalisation the model was trained with."""
    import timm

    from selfsup.commands.export_backbone import export_and_tell

    name = "vit_pwee_patch16_reg1_gap_256"
    node = {**VIT_NODE, "name": name, "img_size": 28, "in_chans": 1, "depth": 1}
    backbone = ViT(name, img_size=28, in_chans=1, depth=1)
    randomize(backbone)
    data = {"_target_": "selfsup.data.synthetic.Synthetic", "image_size": 28, "channels": 1, "mean": [0.25],
            "std": [0.5]}
    export_and_tell(str(fake_run(tmp_path, node, backbone, data)), str(tmp_path / "export"))
    call = next(line for line in capsys.readouterr().out.splitlines() if line.startswith("load with: "))
    model = eval(call[len("load with: "):], {"timm": timm}).eval()
    assert list(model.pretrained_cfg["input_size"]) == [1, 28, 28]
    assert list(model.pretrained_cfg["mean"]) == [0.25] and list(model.pretrained_cfg["std"]) == [0.5]
    images = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(images), backbone.eval()(images), rtol=0, atol=1e-5)


def test_a_hybrid_vit_is_refused_in_one_line():
    from selfsup.errors import ConfigError

    with pytest.raises(ConfigError, match="hybrid ViT"):
        ViT("vit_tiny_r_s16_p8_224", img_size=32, in_chans=3, depth=1)
