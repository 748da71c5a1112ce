"""A run folder shared by someone else is data: eval.py, embed.py and export.py refuse a config.yaml that names
code outside selfsup, before building anything, in one line (the in-process cases are in tests/test_instantiate.py)."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest
from conftest import ROOT
from helpers import torch_load_payload
from omegaconf import OmegaConf


@pytest.mark.parametrize("command", [["eval.py", "protocol=knn"], ["embed.py", "out=OUT/f.npz"],
                                     ["export.py", "out=OUT/export"]], ids=["eval", "embed", "export"])
def test_a_pickle_payload_in_a_shared_config_is_refused(trained_run, tmp_path, command):
    marker = tmp_path / "marker"
    config = OmegaConf.load(trained_run / "config.yaml")
    config.backbone.pos_embed = torch_load_payload(marker)
    OmegaConf.save(config, tmp_path / "config.yaml")
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoints").symlink_to(trained_run / "checkpoints")
    (tmp_path / "config.yaml").rename(run / "config.yaml")
    script, *args = command
    args = [a.replace("OUT", str(tmp_path)) for a in args]
    r = subprocess.run([sys.executable, str(ROOT / script), f"checkpoint={run}", *args],
                       env=dict(os.environ, PYTHONWARNINGS="ignore"), capture_output=True, text=True, timeout=300)
    assert r.returncode != 0
    lines = [line for line in r.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and "refused backbone.pos_embed._target_='torch.load'" in lines[-1]
    assert "Traceback" not in r.stderr
    assert not marker.exists()
