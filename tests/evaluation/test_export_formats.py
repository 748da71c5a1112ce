"""Export: ViT and ResNet backbones load in timm, text encoders in transformers, with identical features; every
export folder gets a model card whose usage snippet runs; push_to_hub stops at the (stubbed) upload call."""
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
             objective: dict = MAE, objective_weights: dict | None = None) -> Path:
    """A run folder as train.py leaves it: config.yaml and checkpoints/last.ckpt with `backbone.*` weights (the
    objective is rebuilt, to ask it for its evaluation model; `objective_weights`: its `objective.*` weights)."""
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    data_node = data_node or {"_target_": "selfsup.data.synthetic.Synthetic", "image_size": 32, "channels": 3,
                              "num_samples": 64, "num_val_samples": 32, "batch_size": 16, "num_workers": 0}
    OmegaConf.save(OmegaConf.create({"seed": 0, "backbone": backbone_node, "data": data_node,
                                     "objective": objective}), run / "config.yaml")
    state = {f"backbone.{k}": v for k, v in backbone.state_dict().items()}
    state.update({f"objective.{k}": v for k, v in (objective_weights or {}).items()})
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
    config = export(run, tmp_path / "export").config
    weights = tmp_path / "export" / "model.safetensors"
    assert weights.is_file() and config["model_args"]["depth"] == 2
    explicit = timm.create_model(config["architecture"], pretrained=True, num_classes=0,
                                 pretrained_cfg_overlay=dict(file=str(weights)), **config["model_args"])
    from_folder = timm.create_model(f"local-dir:{tmp_path / 'export'}", pretrained=True)  # as from the Hub
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        for model in (explicit, from_folder):
            torch.testing.assert_close(model.eval()(images), backbone.eval()(images), rtol=0, atol=1e-6)


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
    config = export(run, tmp_path / "export").config
    assert config["cifar_stem"] is cifar_stem
    images = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        expected = backbone.eval()(images)
        torch.testing.assert_close(load_timm(tmp_path / "export")(images), expected, rtol=0, atol=1e-5)
        if not cifar_stem:  # the ImageNet stem: timm's own pretrained loading works as it is
            model = timm.create_model(f"local-dir:{tmp_path / 'export'}", pretrained=True)
            torch.testing.assert_close(model.eval()(images), expected, rtol=0, atol=1e-5)


def usage_of(folder: Path) -> str:
    """The Python snippet of an export's model card."""
    card = (folder / "README.md").read_text()
    return card.split("```python\n", 1)[1].split("```", 1)[0]


SENTENCES = ["the quick brown fox jumps", "over the lazy dog number 7", "the dog"]


def text_run(tmp_path: Path, norm: str, pool: str, with_head: bool) -> tuple[Path, torch.nn.Module, object, object]:
    """A BERT-MLM run of a tiny encoder with trained-looking weights, its tokenizer saved beside it."""
    from selfsup.backbones.text_transformer import TextTransformer
    from selfsup.data.tokenizer import train_wordpiece
    from selfsup.objectives.mlm import MLMHead

    corpus = [f"the quick brown fox number {i} jumps over the lazy dog and the cat sat on the mat" for i in range(50)]
    tokenizer = train_wordpiece(corpus, vocab_size=80, min_frequency=1)
    tokenizer.save(str(tmp_path / "tok.json"))
    kwargs = {"vocab_size": tokenizer.get_vocab_size() + 3, "dim": 16, "depth": 2, "heads": 2, "dropout": 0.0,
              "attn_dropout": 0.0, "norm": norm, "pool": pool, "max_positions": 32}
    text = TextTransformer(**kwargs)
    head = MLMHead(16, kwargs["vocab_size"])
    randomize(text)
    randomize(head)
    run = fake_run(tmp_path, {"_target_": "selfsup.backbones.text_transformer.TextTransformer", **kwargs}, text,
                   {"_target_": "selfsup.data.text_corpora.TextFiles", "root": str(tmp_path),
                    "tokenizer": {"path": str(tmp_path / "tok.json"), "lowercase": True}},
                   objective=MLM if with_head else {"_target_": "selfsup.objectives.simclr.SimCLR",
                                                    "views": [{"key": "view1"}, {"key": "view2"}]},
                   objective_weights={f"head.{k}": v for k, v in head.state_dict().items()} if with_head else None)
    return run, text.eval(), head.eval(), tokenizer


@needs_text
@pytest.mark.parametrize(("norm", "pool", "architecture"), [("post", "cls", "BertForMaskedLM"),
                                                           ("pre", "mean", "XLMRobertaXLForMaskedLM")])
def test_a_text_encoder_exports_as_a_transformers_model_with_its_features_and_mlm_head(tmp_path, norm, pool,
                                                                                       architecture):
    from transformers import AutoModel, AutoModelForMaskedLM, AutoTokenizer, pipeline

    from selfsup.commands.export_backbone import export
    from selfsup.data.text_datasets import TokenArrays
    from selfsup.data.tokenizer import token_ids_of

    run, text, head, tokenizer = text_run(tmp_path, norm, pool, with_head=True)
    folder = tmp_path / "export"
    config = export(run, folder).config
    assert config["architecture"] == architecture
    assert {"config.json", "model.safetensors", "tokenizer.json", "tokenizer_config.json"} <= {
        p.name for p in folder.iterdir()}
    hf_tokenizer = AutoTokenizer.from_pretrained(folder)
    info = token_ids_of(tokenizer)
    for sentence in SENTENCES:  # the ids training gave this text ([CLS] text [SEP]: a lines-mode sample)
        trained = TokenArrays.encode(tokenizer, [sentence]).tokens.tolist()
        assert hf_tokenizer(sentence)["input_ids"] == [info.cls_id, *trained, info.sep_id]
    batch = hf_tokenizer(SENTENCES, padding=True, return_tensors="pt")
    assert (batch["attention_mask"] == 0).any()  # padding is part of what is compared
    mask = batch["attention_mask"]
    model = AutoModel.from_pretrained(folder).eval()
    with torch.no_grad():
        tokens = model(**batch).last_hidden_state
        expected = text.forward_tokens(batch["input_ids"], mask)
        torch.testing.assert_close(tokens[mask.bool()], expected[mask.bool()], rtol=1e-4, atol=1e-5)
        logits = AutoModelForMaskedLM.from_pretrained(folder).eval()(**batch).logits
        torch.testing.assert_close(logits[mask.bool()], head(expected, text.token_embed.weight)[mask.bool()],
                                   rtol=1e-4, atol=1e-4)
    sentence = "the cat sat on the [MASK]"
    ids = hf_tokenizer(sentence, return_tensors="pt")
    position = ids["input_ids"][0].tolist().index(info.mask_id)  # [MASK] written in the text is the mask token
    with torch.no_grad():
        tokens = text.forward_tokens(ids["input_ids"], ids["attention_mask"])
        scores = head(tokens, text.token_embed.weight)[0, position]
    best = scores[:tokenizer.get_vocab_size()].argmax().item()
    filled = pipeline("fill-mask", model=str(folder), top_k=1)(sentence)[0]
    assert filled["token"] == best

    namespace: dict = {}
    exec(usage_of(folder), namespace)  # the model card's snippet, as a user runs it
    with torch.no_grad():
        mine = text(namespace["batch"]["input_ids"], namespace["batch"]["attention_mask"])
    torch.testing.assert_close(namespace["features"], mine, rtol=1e-4, atol=1e-5)
    assert namespace["predictions"][0]["token"] in range(tokenizer.get_vocab_size())


@needs_text
def test_a_text_encoder_of_another_objective_exports_without_a_head(tmp_path):
    from transformers import AutoConfig

    from selfsup.commands.export_backbone import export

    run, *_ = text_run(tmp_path, "post", "cls", with_head=False)
    done = export(run, tmp_path / "export")
    assert done.config["architecture"] == "BertModel" and done.pipeline_tag == "feature-extraction"
    assert AutoConfig.from_pretrained(tmp_path / "export").architectures == ["BertModel"]
    assert "fill-mask" not in usage_of(tmp_path / "export")


def test_a_pooled_then_normalised_timm_vit_exports_and_the_printed_call_loads_it(tmp_path, capsys):
    """timm ViTs whose default pools first and normalises after (fc_norm, the `gap` models) crashed the export;
    and the printed load call must give timm the input size and normalisation the model was trained with."""

    from selfsup.commands.export_backbone import export_and_tell

    name = "vit_pwee_patch16_reg1_gap_256"
    node = {**VIT_NODE, "name": name, "img_size": 28, "in_chans": 1, "depth": 1}
    backbone = ViT(name, img_size=28, in_chans=1, depth=1)
    randomize(backbone)
    data = {"_target_": "selfsup.data.synthetic.Synthetic", "image_size": 28, "channels": 1, "mean": [0.25],
            "std": [0.5]}
    export_and_tell(str(fake_run(tmp_path, node, backbone, data)), str(tmp_path / "export"))
    printed = capsys.readouterr().out.split("load with:\n", 1)[1]
    assert printed.strip() == usage_of(tmp_path / "export").strip()
    namespace: dict = {}
    exec(printed, namespace)  # the printed snippet, which the model card holds too
    model = namespace["model"]
    assert namespace["features"].shape == (2, backbone.num_features)
    assert list(model.pretrained_cfg["input_size"]) == [1, 28, 28]
    assert list(model.pretrained_cfg["mean"]) == [0.25] and list(model.pretrained_cfg["std"]) == [0.5]
    images = torch.randn(3, 1, 28, 28)
    with torch.no_grad():
        torch.testing.assert_close(model(images), backbone.eval()(images), rtol=0, atol=1e-5)


def test_a_hybrid_vit_is_refused_in_one_line():
    from selfsup.errors import ConfigError

    with pytest.raises(ConfigError, match="hybrid ViT"):
        ViT("vit_tiny_r_s16_p8_224", img_size=32, in_chans=3, depth=1)


def image_run_with_history(tmp_path: Path) -> Path:
    """A ViT run folder with a metrics.csv and an evaluation in results.json, as training and eval.py leave them."""
    backbone = ViT("vit_tiny_patch16_224", img_size=32, in_chans=3, depth=1)
    randomize(backbone)
    run = fake_run(tmp_path, {**VIT_NODE, "depth": 1}, backbone, objective=SIMCLR)
    (run / "metrics.csv").write_text("epoch,step,train/loss,train/wall_s,val/knn_top1\n0,3,2.5,30.0,\n"
                                     "0,7,2.0,60.0,0.4321\n")
    (run / "results.json").write_text('{"knn": {"val/knn_top1": 0.5555}, "knn@random_init": {"val/knn_top1": 0.1}}')
    return run


def test_every_export_has_a_hub_model_card_with_the_runs_budget_metrics_and_results(tmp_path):
    from huggingface_hub import ModelCard

    from selfsup.commands.export_backbone import export

    run = image_run_with_history(tmp_path)
    export(run, tmp_path / "export")
    card = ModelCard.load(tmp_path / "export" / "README.md")  # as the Hub parses it
    meta = card.data.to_dict()
    assert meta["library_name"] == "timm" and meta["pipeline_tag"] == "image-feature-extraction"
    assert meta["license"] == "unknown"  # for the user to set: selfsup cannot know the data's terms
    assert {"selfsup", "self-supervised-learning", "simclr"} <= set(meta["tags"]) and meta["datasets"] == ["synthetic"]
    assert "7 steps" in card.text and "1 epoch," in card.text and "batch 16" in card.text and "1.0 min" in card.text
    assert "| `val/knn_top1` | 0.4321 |" in card.text  # the run's last validation value
    assert "| `val/knn_top1` | 0.5555 |" in card.text and "0.1 |" not in card.text  # eval result, no baseline
    assert "local-dir:" in usage_of(tmp_path / "export")


def test_push_to_hub_uploads_the_export_folder_with_a_card_naming_the_repo(tmp_path, monkeypatch):
    """The Hub client is a local stub: nothing reaches the network; the call it gets is what a real one gets."""
    import huggingface_hub
    from conftest import ROOT, run_in_process

    calls = []

    class StubApi:
        def create_repo(self, repo_id, exist_ok=False, **kw):
            calls.append(("create_repo", repo_id, exist_ok))

        def upload_folder(self, folder_path, repo_id, **kw):
            calls.append(("upload_folder", folder_path, repo_id, sorted(p.name for p in Path(folder_path).iterdir())))
            calls.append(("card", (Path(folder_path) / "README.md").read_text()))
            return f"https://huggingface.co/{repo_id}/commit/0"

    monkeypatch.setattr(huggingface_hub, "HfApi", StubApi)
    run = image_run_with_history(tmp_path)
    out = tmp_path / "export"
    r = run_in_process(ROOT / "export.py", [f"checkpoint={run}", f"out={out}", "push_to_hub=me/tiny-vit"])
    assert r.returncode == 0, r.stderr[-2000:]
    assert calls[0] == ("create_repo", "me/tiny-vit", True)
    assert calls[1] == ("upload_folder", str(out), "me/tiny-vit", ["README.md", "config.json", "model.safetensors"])
    assert "timm.create_model('hf-hub:me/tiny-vit', pretrained=True" in calls[2][1]
    assert "published: https://huggingface.co/me/tiny-vit/commit/0" in r.stdout

    bad = run_in_process(ROOT / "export.py", [f"checkpoint={run}", f"out={out}", "push_to_hub=not a repo"])
    assert bad.returncode == 2 and "USER/REPO" in bad.stderr and len(bad.stderr.strip().splitlines()) == 1


@needs_text
@pytest.mark.parametrize("text_pool", ["cls", "eot"])
def test_a_clip_run_exports_both_towers_and_the_projections_and_the_cards_snippet_rebuilds_it(tmp_path, text_pool):
    """The snippet uses timm, transformers and safetensors alone; its embeddings and logits are the DualEncoder's."""
    from selfsup.backbones.text_transformer import TextTransformer
    from selfsup.commands.export_backbone import export
    from selfsup.data.image_text_datasets import Captions
    from selfsup.data.tokenizer import token_ids_of, train_wordpiece
    from selfsup.objectives.clip import CLIP, DualEncoder

    corpus = [f"a photo of a cat number {i} and a drawing of a dog" for i in range(50)]
    tokenizer = train_wordpiece(corpus, vocab_size=70, min_frequency=1)
    tokenizer.save(str(tmp_path / "tok.json"))
    text_node = {"vocab_size": tokenizer.get_vocab_size(), "dim": 16, "depth": 1, "heads": 2, "dropout": 0.0,
                 "attn_dropout": 0.0, "max_positions": 12}
    image = ViT("vit_tiny_patch16_224", img_size=32, in_chans=3, depth=1)
    clip = CLIP(image, TextTransformer(**text_node), embed_dim=8, text_pool=text_pool)
    randomize(image)
    randomize(clip)
    objective = {"_target_": "selfsup.objectives.clip.CLIP", "embed_dim": 8, "text_pool": text_pool,
                 "text_tower": {"_target_": "selfsup.backbones.text_transformer.TextTransformer", **text_node}}
    data = {"_target_": "selfsup.data.synthetic.Synthetic", "image_size": 32, "channels": 3,
            "tokenizer": {"path": str(tmp_path / "tok.json"), "lowercase": True}, "context_length": 12}
    run = fake_run(tmp_path, {**VIT_NODE, "depth": 1}, image, data, objective=objective,
                   objective_weights=clip.state_dict())
    folder = tmp_path / "export"
    done = export(run, folder)
    assert done.config["format"] == "dual-encoder" and done.pipeline_tag == "zero-shot-image-classification"
    assert {"image", "text", "projections.safetensors", "config.json", "README.md"} <= {p.name for p in
                                                                                      folder.iterdir()}
    namespace: dict = {}
    exec(usage_of(folder), namespace)
    dual = DualEncoder(image.eval(), clip.eval())
    captions = Captions(tokenizer, token_ids_of(tokenizer), 12)
    encoded = [captions(t) for t in ["a photo of a cat", "a drawing of a dog"]]
    ids = torch.stack([e["input_ids"] for e in encoded])
    mask = torch.stack([e["attention_mask"] for e in encoded])
    assert torch.equal(namespace["batch"]["input_ids"], ids)  # the captions as training tokenised them
    with torch.no_grad():
        image_emb, text_emb = dual(namespace["images"], ids, mask)
    torch.testing.assert_close(namespace["image_emb"], image_emb, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(namespace["text_emb"], text_emb, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(namespace["logits"], clip.scale() * image_emb @ text_emb.T, rtol=1e-4, atol=1e-4)
