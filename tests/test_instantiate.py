"""The trusted-target check: a run folder's config is data, so nothing it names outside selfsup is built."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from helpers import torch_load_payload
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from selfsup.checks import choices
from selfsup.errors import ConfigError
from selfsup.instantiate import TRUST_VARIABLE, build, is_trusted, load_trusted_config, trusted_node

ROOT = Path(__file__).resolve().parents[1]
CONFIG_DIR = ROOT / "configs"


def run_config(extra: dict) -> dict:
    """A run folder's config.yaml as selfsup writes it, with `extra` merged into its backbone."""
    backbone = {"_target_": "selfsup.backbones.vit.ViT", "name": "vit_tiny_patch16_224", "img_size": 28,
                "in_chans": 1, "depth": 1, **extra}
    return {"seed": 0, "backbone": backbone, "data": {"_target_": "selfsup.data.synthetic.Synthetic"}}


def payloads(marker: Path) -> dict[str, tuple[dict, str]]:
    """name -> (config, the key path the refusal must name)."""
    return {
        "torch_load_base64": (run_config({"pos_embed": torch_load_payload(marker)}), "backbone.pos_embed._target_"),
        "os_system": (run_config({"name": {"_target_": "os.system", "_args_": [f"touch {marker}"]}}),
                      "backbone.name._target_"),
        "builtins_eval": (run_config({"depth": {"_target_": "builtins.eval", "_args_": ["1"]}}),
                          "backbone.depth._target_"),
        "subprocess_run": (run_config({"name": {"_target_": "subprocess.run", "args": ["touch", str(marker)]}}),
                           "backbone.name._target_"),
        "nested_in_a_list": (run_config({"extra": [1, {"deeper": [{"_target_": "os.system", "_args_": ["true"]}]}]}),
                             "backbone.extra[1].deeper[0]._target_"),
        "reexported_module": (run_config({"name": {"_target_": "selfsup.runs.os.system", "_args_": ["true"]}}),
                              "backbone.name._target_"),
        "partial": (run_config({"name": {"_target_": "os.system", "_partial_": True}}), "backbone.name._target_"),
        "interpolated_target": ({**run_config({"name": {"_target_": "${evil}"}}), "evil": "posix.system"},
                                "backbone.name._target_"),
        "decoded_target": ({**run_config({"name": "${oc.decode:'{_target_: os.system, _args_: [true]}'}"})},
                           "backbone.name"),
        "environment_variable": (run_config({"name": "${oc.env:HOME}"}), "backbone.name"),
        "a_loader_key": (run_config({"checkpoint_path": str(marker)}), "backbone.checkpoint_path"),
        "a_selfsup_function_that_runs_git": (run_config({"name": {"_target_": "selfsup.run_info._git_commit",
                                                                  "repo": str(marker)}}), "backbone.name._target_"),
        "a_selfsup_function_that_writes": (run_config({"name": {"_target_": "selfsup.evaluation.results.update_results",
                                                                "path": str(marker), "key": "k", "entry": {}}}),
                                           "backbone.name._target_"),
        "the_whole_node": ({**run_config({}), "backbone": {"_target_": "timm.create_model",
                                                           "model_name": "vit_tiny_patch16_224"}},
                           "backbone._target_"),
    }


@pytest.mark.parametrize("name", list(payloads(Path("m"))))
def test_untrusted_targets_in_a_run_config_are_refused_before_anything_is_built(tmp_path, name):
    marker = tmp_path / "marker"
    config, where = payloads(marker)[name]
    path = tmp_path / "config.yaml"
    OmegaConf.save(OmegaConf.create(config), path)
    with pytest.raises(ConfigError) as e:
        load_trusted_config(path)
    message = str(e.value)
    assert "\n" not in message and f"refused {where}=" in message and TRUST_VARIABLE in message
    assert not marker.exists()


def test_an_escaped_interpolation_is_refused(tmp_path):
    """`\\${...}` resolves to the text `${...}`, which OmegaConf would read as an interpolation again later."""
    marker = tmp_path / "marker"
    path = tmp_path / "config.yaml"
    path.write_text("backbone:\n  _target_: selfsup.backbones.resnet.ResNet\n"
                    f"  name: '\\${{oc.create:{{_target_: os.system, _args_: [touch {marker}]}}}}'\n")
    assert "\\${oc.create" in path.read_text()
    with pytest.raises(ConfigError, match="refused backbone.name=.*an interpolation"):
        load_trusted_config(path)
    assert not marker.exists()


def test_an_export_folder_is_checked_too(tmp_path):
    from selfsup.assemble import load_exported_module

    for backbone in ("{_target_: builtins.print, _args_: [x]}", {"_target_": "selfsup.backbones.resnet.ResNet",
                                                                  "name": "${oc.create:{_target_: os.getcwd}}"}):
        (tmp_path / "config.json").write_text(json.dumps({"format": "selfsup-module", "backbone": backbone}))
        with pytest.raises(ConfigError, match="refused|not a config mapping"):
            load_exported_module(tmp_path)


def test_targets_of_renamed_modules_are_read_under_their_new_names(tmp_path):
    path = tmp_path / "config.yaml"
    OmegaConf.save(OmegaConf.create({"backbone": {"_target_": "selfsup.backbones.text.TextTransformer"}}), path)
    assert load_trusted_config(path).backbone._target_ == "selfsup.backbones.text_transformer.TextTransformer"


def test_the_payload_does_run_without_the_check(tmp_path):
    """The base64 payload is real: Hydra's instantiate alone runs it (which is why every run config is checked)."""
    marker = tmp_path / "marker"
    build(OmegaConf.create(torch_load_payload(marker)))
    assert marker.exists()


def test_user_trusted_names_and_prefixes(monkeypatch):
    assert not is_trusted("collections.OrderedDict")
    monkeypatch.setenv(TRUST_VARIABLE, "collections.OrderedDict, json.")
    assert is_trusted("collections.OrderedDict")
    assert is_trusted("json.decoder.JSONDecoder")  # a class defined in json, under its own name
    assert not is_trusted("json.JSONDecoder")  # re-exported: not its canonical name
    assert not is_trusted("json.loads")  # a prefix trusts classes, not functions
    assert not is_trusted("json.decoder.re.Pattern")  # reached through json, defined elsewhere
    assert not is_trusted("collections.Counter")


def test_selfsup_targets_must_be_classes_of_a_run_under_their_own_name():
    assert is_trusted("selfsup.backbones.vit.ViT")
    assert is_trusted("selfsup.data.synthetic.Synthetic")
    assert is_trusted("selfsup.evaluation.knn.KNNProtocol")
    assert is_trusted("selfsup.callbacks.online_monitors.KNNMonitor")
    assert is_trusted("selfsup.optim.OptimConfig.from_recipe")  # named one by one
    assert not is_trusted("selfsup.optim.OptimConfig")  # a dataclass, not a piece of a run
    assert not is_trusted("selfsup.run_info.record_run_info")  # functions write and run things
    assert not is_trusted("selfsup.assemble.ViT")  # not its canonical name
    assert not is_trusted("selfsup.runs.shutil.rmtree")
    assert not is_trusted("selfsup.no_such_module.Thing")
    assert not is_trusted("selfsup.instantiate.EXTERNAL_TARGETS")  # not a callable
    assert not is_trusted(["selfsup.backbones.vit.ViT"])


def composed(objective: str, *extra: str) -> dict:
    """A training config as train.py saves it to RUN/config.yaml (resolved)."""
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("train", overrides=[f"objective={objective}", "run_dir=/tmp/run", *extra])
    return OmegaConf.to_container(cfg, resolve=True)


@pytest.mark.parametrize("objective", choices(CONFIG_DIR, "objective"))
def test_every_config_selfsup_writes_passes_the_check(tmp_path, objective):
    config = composed(objective)
    path = tmp_path / "config.yaml"
    OmegaConf.save(OmegaConf.create(config), path)
    assert OmegaConf.to_container(load_trusted_config(path)) == config


@pytest.mark.parametrize("data", [d for d in choices(CONFIG_DIR, "data")])
def test_every_data_choice_passes_the_check(data):
    with initialize_config_dir(str(CONFIG_DIR), version_base="1.3"):
        cfg = compose("eval", overrides=[f"data={data}", "checkpoint=x"])
    trusted_node(OmegaConf.to_container(cfg, resolve=True), "eval config")


def test_unreadable_run_configs_are_one_line_errors(tmp_path):
    bad = tmp_path / "config.yaml"
    bad.write_text("backbone: [unclosed\n")
    with pytest.raises(ConfigError, match="not a readable config"):
        load_trusted_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="not a config mapping"):
        load_trusted_config(bad)
    bad.write_text("a: ${missing}\n")
    with pytest.raises(ConfigError, match="refused a=.*an interpolation"):
        load_trusted_config(bad)
