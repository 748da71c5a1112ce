"""Bad input to every command (train.py, eval.py, embed.py, compare.py, export.py): one line naming the problem and
its fix, a non-zero exit, no traceback, and no run folder or output left behind.

Each case is the user's command line with `{TMP}` (the test's folder) and `{RUN}` (a trained run folder) filled in;
a case may first prepare files (SETUPS). The run folder's checks come before anything heavy (config_check), so
most train.py cases stop before torch is even needed; the rest (a timm name, sizes, data found when opened) fail
while the run is being built.
"""
from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from conftest import ROOT, TINY, run_in_process

TRAIN = ["objective=mae", *TINY, "trainer.max_steps=1", "run_dir={TMP}/run"]
OTHER_PIECES = ["logger=csv", "trainer=cpu", "trainer.max_steps=1", "run_dir={TMP}/run"]  # TINY is MAE's

CASES: dict[str, tuple[str, list[str], str]] = {
    # train.py: values of the wrong type
    "seed not a number": ("train", ["seed=abc"], "seed must be a whole number, got 'abc'"),
    "seed a fraction": ("train", ["seed=1.5"], "seed must be a whole number, got 1.5"),
    "max_steps a word": ("train", ["trainer.max_steps=ten"], "trainer.max_steps must be a whole number, got 'ten'"),
    "max_steps a fraction": ("train", ["trainer.max_steps=2.5"], "trainer.max_steps must be a whole number"),
    "batch size a word": ("train", ["data.batch_size=big"], "data.batch_size must be a whole number, got 'big'"),
    "batch size a float": ("train", ["data.batch_size=8.0"], "data.batch_size must be a whole number, got 8.0"),
    "workers a word": ("train", ["data.num_workers=two"], "data.num_workers must be a whole number"),
    "lr a word": ("train", ["optim.lr=fast"], "optim.lr must be a number, got 'fast'"),
    "weight decay a word": ("train", ["optim.weight_decay=none"], "optim.weight_decay must be a number"),
    "accumulation a word": ("train", ["trainer.accumulate_grad_batches=x"],
                            "trainer.accumulate_grad_batches must be a whole number"),
    "checkpoint interval a word": ("train", ["checkpoint.every_n_steps=often"],
                                   "checkpoint.every_n_steps must be a whole number, got 'often'"),
    "deterministic not a bool": ("train", ["trainer.deterministic=maybe"],
                                 "trainer.deterministic must be true or false, got 'maybe'"),
    "compile not a bool": ("train", ["compile=yes"], "compile must be true or false, got 'yes'"),
    "min_free_gb a word": ("train", ["min_free_gb=lots"], "min_free_gb must be a number, got 'lots'"),
    "log interval a float": ("train", ["trainer.log_every_n_steps=1e2"], "trainer.log_every_n_steps must be a whole"),
    "knn temperature a word": ("train", ["monitors.knn.temperature=hot"], "monitors.knn.temperature must be a number"),
    "clip value a word": ("train", ["trainer.gradient_clip_val=high"], "trainer.gradient_clip_val must be a number"),
    "image size a word": ("train", ["data.image_size=large"], "data.image_size must be a whole number"),
    "preemption interval a word": ("train", ["preemption.check_every_n_steps=x"],
                                   "preemption.check_every_n_steps must be a whole number"),
    "pictures interval a word": ("train", ["pictures_every_n_epochs=x"], "pictures_every_n_epochs must be a whole"),
    "mask ratio a word": ("train", ["objective.mask_ratio=most"], "objective.mask_ratio must be a number"),
    "max_epochs a list": ("train", ["trainer.max_epochs=[1,2]"], "trainer.max_epochs must be a whole number"),
    # train.py: zero or negative counts and intervals, values out of range
    "zero steps": ("train", ["trainer.max_steps=0"], "trainer.max_steps must be -1 or at least 1, got 0"),
    "negative steps": ("train", ["trainer.max_steps=-5"], "trainer.max_steps must be -1 or at least 1, got -5"),
    "zero epochs": ("train", ["trainer.max_epochs=0"], "trainer.max_epochs must be -1 or at least 1, got 0"),
    "zero accumulation": ("train", ["trainer.accumulate_grad_batches=0"],
                          "trainer.accumulate_grad_batches must be at least 1, got 0"),
    "negative accumulation": ("train", ["trainer.accumulate_grad_batches=-1"],
                              "trainer.accumulate_grad_batches must be at least 1, got -1"),
    "zero batch": ("train", ["data.batch_size=0"], "data.batch_size must be at least 1, got 0"),
    "negative batch": ("train", ["data.batch_size=-8"], "data.batch_size must be at least 1, got -8"),
    "negative workers": ("train", ["data.num_workers=-1"], "data.num_workers must be at least 0, got -1"),
    "negative checkpoint interval": ("train", ["checkpoint.every_n_steps=-1"],
                                     "checkpoint.every_n_steps must be at least 0, got -1"),
    "negative epoch interval": ("train", ["checkpoint.every_n_epochs=-2"],
                                "checkpoint.every_n_epochs must be at least 0, got -2"),
    "zero log interval": ("train", ["trainer.log_every_n_steps=0"], "trainer.log_every_n_steps must be at least 1"),
    "zero lr": ("train", ["optim.lr=0"], "optim.lr must be above 0, got 0"),
    "negative lr": ("train", ["optim.lr=-1e-3"], "optim.lr must be above 0, got -0.001"),
    "negative weight decay": ("train", ["optim.weight_decay=-0.1"], "optim.weight_decay must be at least 0"),
    "negative seed": ("train", ["seed=-1"], "seed must be at least 0, got -1"),
    "negative free space": ("train", ["min_free_gb=-1"], "min_free_gb must be at least 0, got -1"),
    "negative clip": ("train", ["trainer.gradient_clip_val=-1"], "trainer.gradient_clip_val must be at least 0"),
    "zero nodes": ("train", ["trainer.num_nodes=0"], "trainer.num_nodes must be at least 1, got 0"),
    "zero preemption interval": ("train", ["preemption.check_every_n_steps=0"],
                                 "preemption.check_every_n_steps must be at least 1, got 0"),
    "zero knn temperature": ("train", ["monitors.knn.temperature=0"], "monitors.knn.temperature must be above 0"),
    "negative val batches": ("train", ["trainer.limit_val_batches=-1"], "trainer.limit_val_batches must be at least 0"),
    "zero image size": ("train", ["data.image_size=0"], "data.image_size must be at least 1, got 0"),
    "zero val interval": ("train", ["trainer.check_val_every_n_epoch=0"],
                          "trainer.check_val_every_n_epoch must be at least 1, got 0"),
    "zero skips allowed": ("train", ["trainer.nonfinite_max_consecutive_skips=0"],
                           "trainer.nonfinite_max_consecutive_skips must be at least 1"),
    "mask ratio above 1": ("train", ["objective.mask_ratio=1.2"], "objective.mask_ratio must lie in (0, 1), got 1.2"),
    "mask ratio zero": ("train", ["objective.mask_ratio=0"], "objective.mask_ratio must lie in (0, 1)"),
    # train.py: misspelt keys, with the closest valid key
    "misspelt max_steps": ("train", ["trainer.max_step=5"], "unknown key 'trainer.max_step'; did you mean "
                                                             "trainer.max_steps?"),
    "misspelt seed": ("train", ["sed=1"], "unknown key 'sed'; did you mean seed?"),
    "misspelt batch size": ("train", ["data.batchsize=3"], "did you mean data.batch_size?"),
    "misspelt group": ("train", ["objectiv=mae"], "unknown key 'objectiv'; did you mean objective?"),
    "misspelt lr": ("train", ["optim.lrr=1"], "did you mean optim.lr?"),
    "misspelt checkpoint key": ("train", ["checkpoint.every_n_step=2"], "did you mean checkpoint.every_n_steps?"),
    "misspelt precision": ("train", ["trainer.precison=32"], "did you mean trainer.precision?"),
    "misspelt mask ratio": ("train", ["objective.mask_ration=0.5"], "did you mean objective.mask_ratio?"),
    "added Trainer key misspelt": ("train", ["+trainer.max_step=3"], "trainer.max_step is not an argument of "
                                                                     "Lightning's Trainer; did you mean trainer.max_"),
    # train.py: unknown names
    "unknown backbone config": ("train", ["backbone=vit_gigantic"], "unknown backbone 'vit_gigantic'; choose one of"),
    "unknown objective": ("train", ["objective=dino9"],
                          "unknown objective 'dino9'; choose one of: barlow_twins, byol, clap, clip, dino, dinov2"),
    "dinov2 on a resnet": ("train", ["objective=dinov2", "backbone=resnet18"],
                           "objective=dinov2 masks patch tokens and needs a ViT backbone, got ResNet"),
    "bad lr scaling": ("train", ["optim.lr_scaling=cubic"], "optim.lr_scaling must be linear or sqrt"),
    "unknown data": ("train", ["data=imagenet22k"], "unknown data 'imagenet22k'; choose one of"),
    "unknown zero-shot data": ("train", ["data@monitors.zero_shot.data=imagenet_val"],
                               "unknown data 'imagenet_val'; choose one"),
    "unknown sweep value": ("train", ["-m", "objective=mae,simclrr"], "unknown objective 'simclrr'"),
    "bad sweep value": ("train", ["-m", "seed=0,x"], "seed must be a whole number, got 'x'"),
    "unknown timm model": ("train", ["backbone.name=vit_nonexistent_patch16"],
                           "unknown timm model 'vit_nonexistent_patch16'"),
    "unknown optimizer": ("train", ["optim.name=lamb"], "unknown optimizer 'lamb' in optim.name; choose adamw, lars"),
    "augmentation device": ("train", ["data.augment_on=tpu"],
                            "data.augment_on must be one of ('auto', 'cpu', 'gpu'), got 'tpu'"),
    "unknown view option": ("train", ["+objective.views.0.colour_jitter=0.4"],
                            "unknown view options ['colour_jitter']"),
    "unknown nonfinite policy": ("train", ["trainer.nonfinite=ignore"], "trainer.nonfinite must be one of"),
    # train.py: modalities and sizes
    "text backbone for MAE": ("train", ["backbone=text_tiny"], "objective MAE needs image or audio backbone, but "
                                                                "the chosen backbone is text"),
    "image data for MLM": ("train", ["objective=mlm", "data=fashion_mnist"], "objective MLM needs text data"),
    "image data for CLIP": ("train", ["objective=clip", "data=synthetic"],
                            "objective CLIP needs image-text or audio-text data"),
    "patch does not divide image": ("train", ["backbone.patch_size=5"], "image size 28 is not divisible by patch size"),
    "batch larger than data": ("train", ["data=synthetic", "data.num_samples=40", "data.batch_size=64"],
                               "global batch 64 (data.batch_size=64 x 1 devices) is larger than the 40 training"),
    # train.py: paths given explicitly that do not exist, unusable run folders
    "missing image folder": ("train", ["data=image_folder", "data.root=/nonexistent/images"],
                             "data.root=/nonexistent/images: no such folder"),
    "missing cifar": ("train", ["data=cifar10", "data.root=/nonexistent/cifar"], "data.root=/nonexistent/cifar: no"),
    "missing fashion-mnist": ("train", ["data=fashion_mnist", "data.root=/nonexistent/fm"],
                              "data.root=/nonexistent/fm: no such folder"),
    "missing wordnet": ("train", ["objective=mlm", "data=wordnet", "data.root=/nonexistent/wn"],
                        "data.root=/nonexistent/wn: no such folder"),
    "missing manifest": ("train", ["objective=clip", "data=image_text_manifest", "data.manifest=/nonexistent.jsonl"],
                         "data.manifest=/nonexistent.jsonl: no such file"),
    "empty image folder": ("train", ["data=image_folder", "data.root={TMP}/empty"], "no images under"),
    "resume from nothing": ("train", ["resume=/nonexistent/run.ckpt"], "resume=/nonexistent/run.ckpt: no checkpoint"),
    "resume from a text file": ("train", ["resume={TMP}/notes.ckpt"], "not a whole checkpoint file"),
    "run_dir non-ASCII unquoted": ("train", ["run_dir={TMP}/runs/été"], "cannot read the argument 'run_dir="),
    "run_dir a file": ("train", ["run_dir={TMP}/notes.ckpt"], "is a file, not a folder"),
    "run_dir under a file": ("train", ["run_dir={TMP}/notes.ckpt/run"], "is a file, not a folder"),
    "run_dir holds another run": ("train", ["run_dir={RUN}"], "already holds a run"),
    # eval.py
    "eval without checkpoint": ("eval", [], "give checkpoint=..."),
    "eval missing checkpoint": ("eval", ["checkpoint=/nonexistent"], "checkpoint=/nonexistent: no such file or folder"),
    "eval folder without config": ("eval", ["checkpoint={TMP}/empty"], "no config.yaml in run folder"),
    "eval unknown protocol": ("eval", ["checkpoint={RUN}", "protocol=knn2"], "unknown protocol 'knn2'"),
    "eval unknown weights": ("eval", ["checkpoint={RUN}", "weights=best"], "weights=best is not one of"),
    "eval seed a word": ("eval", ["checkpoint={RUN}", "seed=abc"], "seed must be a whole number, got 'abc'"),
    "eval zero batch": ("eval", ["checkpoint={RUN}", "batch_size=0"], "batch_size must be at least 1, got 0"),
    "eval negative samples": ("eval", ["checkpoint={RUN}", "max_train_samples=-3"], "max_train_samples must be at"),
    "eval misspelt key": ("eval", ["checkpoint={RUN}", "batchsize=3"], "did you mean batch_size?"),
    "eval unknown device": ("eval", ["checkpoint={RUN}", "device=tpu"], "device=tpu"),
    "eval corrupt results.json": ("eval", ["checkpoint={TMP}/run_copy", "protocol=knn"], "results.json (JSONDecodeErr"),
    "eval unknown data": ("eval", ["checkpoint={RUN}", "data=imagenet9"], "unknown data 'imagenet9'"),
    # embed.py
    "embed without out": ("embed", ["checkpoint={RUN}"], "give out=..."),
    "embed unknown format": ("embed", ["checkpoint={RUN}", "out={TMP}/f.txt"], "unknown format '.txt'"),
    "embed unknown split": ("embed", ["checkpoint={RUN}", "out={TMP}/f.npz", "split=test"], "split=test: choose"),
    "embed zero samples": ("embed", ["checkpoint={RUN}", "out={TMP}/f.npz", "max_samples=0"],
                           "max_samples must be at least 1, got 0"),
    "embed seed a word": ("embed", ["checkpoint={RUN}", "out={TMP}/f.npz", "seed=abc"], "seed must be a whole"),
    "embed missing checkpoint": ("embed", ["checkpoint=/nonexistent", "out={TMP}/f.npz"], "no such file or folder"),
    # compare.py
    "compare missing folder": ("compare", ["{TMP}/nothere"], "no folder"),
    "compare no runs": ("compare", ["{TMP}/empty"], "no runs under"),
    "compare non-UTF-8 metrics": ("compare", ["{TMP}/runs"], "metrics.csv (UnicodeDecodeError"),
    "compare corrupt results.json": ("compare", ["{TMP}/runs_results"], "results.json (JSONDecodeError"),
    "compare corrupt config": ("compare", ["{TMP}/runs_config"], "config.yaml (ParserError"),
    # export.py
    "export without arguments": ("export", [], "give checkpoint=..."),
    "export without out": ("export", ["checkpoint={RUN}"], "give out=..."),
    "export unknown argument": ("export", ["checkpoint={RUN}", "out={TMP}/x", "format=onnx"], "unknown argument"),
    "export missing checkpoint": ("export", ["checkpoint=/nonexistent", "out={TMP}/x"], "no such file or folder"),
}


def prepare(tmp: Path, run: Path) -> None:
    """The files some cases need: an empty folder, a text file named like a checkpoint, a copy of the run with a
    corrupt results.json, and run folders whose metrics, results or config cannot be read."""
    (tmp / "empty").mkdir()
    (tmp / "notes.ckpt").write_text("not a checkpoint\n")
    shutil.copytree(run, tmp / "run_copy", ignore=shutil.ignore_patterns("step_*.ckpt", "wandb", "eval"))
    (tmp / "run_copy" / "results.json").write_text("{bad json")
    for name, file, content in (("runs", "metrics.csv", b"step,train/loss\n0,\xff\xfe1.0\n"),
                                ("runs_results", "results.json", b"{bad json"),
                                ("runs_config", "config.yaml", b"seed: [\n")):
        folder = tmp / name / "r1"
        folder.mkdir(parents=True)
        (folder / "config.yaml").write_text("seed: 0\n")
        (folder / "metrics.csv").write_text("step,train/loss\n0,1.0\n")
        (folder / file).write_bytes(content)


def test_the_table_covers_every_command_with_enough_cases():
    commands = {command for command, _, _ in CASES.values()}
    assert commands == {"train", "eval", "embed", "compare", "export"} and len(CASES) >= 80


@pytest.mark.parametrize("command,args,message", CASES.values(), ids=CASES.keys())
def test_bad_input_gives_one_line(trained_run, tmp_path, command, args, message):
    prepare(tmp_path, trained_run)
    fill = lambda arg: arg.replace("{TMP}", str(tmp_path)).replace("{RUN}", str(trained_run))  # noqa: E731
    other = any(a.startswith(("objective=", "backbone=")) for a in args)
    argv = [fill(a) for a in (((OTHER_PIECES if other else TRAIN) + args) if command == "train" else args)]
    before = sorted(p.name for p in trained_run.iterdir())
    r = run_in_process(ROOT / f"{command}.py", argv, cwd=tmp_path, env={"WANDB_MODE": "offline"})
    assert r.returncode == 2, (r.returncode, r.stderr[-2000:])
    assert "Traceback" not in r.stderr, r.stderr[-2000:]
    errors = [line for line in r.stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and message in errors[0], r.stderr[-2000:]
    assert not (tmp_path / "run").exists() and not (tmp_path / "runs" / "été").exists()  # no half-made run folder
    assert not (tmp_path / "x").exists() and not (tmp_path / "f.npz").exists()
    assert sorted(p.name for p in trained_run.iterdir()) == before


@pytest.mark.parametrize("name", ["my runs", "été"])
def test_run_dir_with_a_space_or_non_ascii_characters_trains_when_quoted(train, tmp_path, name):
    run_dir = tmp_path / name / "run"
    r = train([*TRAIN[:-1], f'run_dir="{run_dir}"'])
    assert r.returncode == 0, r.stderr[-2000:]
    assert (run_dir / "checkpoints" / "last.ckpt").is_file() and (run_dir / "metrics.csv").is_file()
