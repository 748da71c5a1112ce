"""The README's commands, as a user types them, run here (the workflows used to break on paths the tests drove
with arguments of their own).

Every command in README.md's code blocks that starts with `python`, `sbatch`, `bash`, `pip` or `apt-get` (after
VAR=value assignments) runs in a fresh clone of the repository with a small budget appended (a few steps, small
batches and sample caps: budget() below; Hydra takes the last value of a key), and what it writes is checked:
each run folder holds its config, checkpoints/last.ckpt, a metrics.csv with a train/loss row and one offline
wandb run holding only that run's metrics (each job of a sweep too, all in the sweep's wandb group); a
`compile=true` run compiles and ends with the weights of its eager twin; eval.py writes its protocol's results,
embed.py its file, export.py its folder, compare.py one row per method with its seeds. A command that cannot run
here is marked in the README by
`<!-- untested "PART OF THE COMMAND": reason -->` and reported as skipped with that reason.

The README's placeholders are made real: `/data/...` is a folder the test fills (an ImageNet-style image folder,
cc3m-style shards), `RUN` a run the README's own commands trained (the CLIP run for zero-shot and retrieval, else
the default MAE run), as is `runs/2026-11-23/10-00-00_mae`; `runs/sweeps/2026-11-23/10-00-00` is the sweep of
the multirun in the same code block. SLURM commands run on the local cluster (slurm/local_cluster.sh) with
sbatch options for its one CPU node inserted before the script.
"""
from __future__ import annotations

import csv
import io
import json
import os
import re
import shlex
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import torch
from conftest import ROOT, fresh_clone, needs_cxx, run_in_process
from PIL import Image
from slurm_utils import sbatch, wait_for_job
from torch._dynamo.utils import counters

from selfsup.evaluation.wandb_offline import history, offline_runs

PROGRAMS = ("python", "sbatch", "bash", "pip", "apt-get")
UNTESTED = re.compile(r'^<!-- untested "([^"]+)": (.+?) -->$', re.MULTILINE)  # a line of its own
MAE_RUN, SWEEP = "runs/2026-11-23/10-00-00_mae", "runs/sweeps/2026-11-23/10-00-00"
ASSIGNMENT = re.compile(r"[A-Z_]+=\S*")  # VAR=value before a command
# offline wandb as for a user who has not logged in; WARMUP/ITERS: one timed step of bench/throughput.py
ENV = {"WANDB_MODE": "offline", "WANDB_SILENT": "true", "OMP_NUM_THREADS": "2", "WARMUP": "0", "ITERS": "1"}

# (trainer.log_every_n_steps stays at its default, above the steps: short runs must still log their loss)
TRAIN_BUDGET = ["trainer.max_steps=2", "trainer.limit_val_batches=1",
                "data.batch_size=4", "data.num_workers=0", "monitors.max_train_samples=32",
                "monitors.max_val_samples=16"]
SLURM_LAUNCHER = ["hydra.launcher.partition=local", "hydra.launcher.gpus_per_node=0", "trainer.accelerator=cpu",
                  "hydra.launcher.cpus_per_task=1", "hydra.launcher.timeout_min=15"]
SBATCH_ONE_CPU_NODE = ["--partition=local", "--nodes=1", "--ntasks-per-node=1", "--gpus-per-node=0",
                       "--cpus-per-task=1", "--time=15"]
# the order the commands run in: what trains first, then what reads its runs
STAGES = ("train.py", "train.py -m", "sbatch", "eval.py", "embed.py", "export.py", "compare.py")


@dataclass
class Command:
    line: int  # of README.md
    block: int  # which code block
    text: str  # as written, continuation lines joined
    words: list[str]  # the shell words, without the trailing comment
    untested: str | None = None  # the README's reason

    @property
    def program(self) -> str:
        words = [w for w in self.words if not ASSIGNMENT.fullmatch(w)]
        if words[0] == "python" and words[1].endswith(".py"):
            return Path(words[1]).name + (" -m" if "-m" in words[2:] else "")
        return words[0]

    @property
    def stage(self) -> int:
        return STAGES.index(self.program) if self.program in STAGES else len(STAGES)

    def value(self, key: str) -> str | None:
        return value_of(self.words, key)


def value_of(words: list[str], key: str) -> str | None:
    """The last `key=value` of the words (the one Hydra takes)."""
    found = [w.split("=", 1)[1] for w in words if w.startswith(key + "=")]
    return found[-1] if found else None


def readme_commands(text: str) -> list[Command]:
    commands, block, inside, start, pending = [], -1, False, 0, ""
    for number, line in enumerate(text.splitlines(), 1):
        if line.startswith("```"):
            inside = not inside
            block += inside
            continue
        if not inside:
            continue
        if not pending:
            start = number
        pending += line[:-1] + " " if line.endswith("\\") else line
        if line.endswith("\\"):
            continue
        program = next((w for w in pending.split() if not ASSIGNMENT.fullmatch(w)), None)
        if program in PROGRAMS:  # other blocks show files and diagrams
            commands.append(Command(start, block, " ".join(pending.split()), shlex.split(pending, comments=True)))
        pending = ""
    for part, reason in UNTESTED.findall(text):
        matching = [c for c in commands if part in c.text]
        assert len(matching) == 1, f"README marker <!-- untested {part!r} --> matches {len(matching)} commands"
        matching[0].untested = reason
    return sorted(commands, key=lambda c: (c.stage, c.line))


COMMANDS = readme_commands((ROOT / "README.md").read_text(encoding="utf-8"))


def test_the_readme_has_commands_and_few_are_untested():
    programs = {c.program for c in COMMANDS if not c.untested}
    assert {"train.py", "train.py -m", "sbatch", "eval.py", "embed.py", "export.py", "compare.py"} <= programs
    assert sum(bool(c.untested) for c in COMMANDS) <= len(COMMANDS) // 3


# -- what the commands run on -------------------------------------------------------------------------------------
def write_data(root: Path) -> None:
    """/data/imagenet: two classes of 8 training and 2 validation images; /data/cc3m(-val): img2dataset-style
    shards with one pair each, as many as the README's brace patterns name."""
    import webdataset as wds

    for split, n in (("train", 8), ("val", 2)):
        for c, colour in enumerate(((200, 30, 30), (30, 30, 200))):
            folder = root / "imagenet" / split / f"n0000000{c}"
            folder.mkdir(parents=True)
            for i in range(n):
                Image.new("RGB", (40 + i, 36), tuple(v + 3 * i for v in colour)).save(folder / f"{i}.JPEG")
    for name, count in (("cc3m", 332), ("cc3m-val", 4)):
        (root / name).mkdir()
        for s in range(count):
            buffer = io.BytesIO()
            Image.new("RGB", (30, 24), (s % 255, 90, 160)).save(buffer, format="JPEG")
            with wds.TarWriter(str(root / name / f"{s:05d}.tar")) as sink:
                sink.write({"__key__": f"{s:09d}", "jpg": buffer.getvalue(), "txt": f"a blue picture number {s}"})


def write_local_inputs(clone: Path) -> None:
    """The README's relative inputs: `corpus/` (text files) and `pairs.jsonl` (an image-text manifest)."""
    (clone / "corpus").mkdir()
    for d in range(3):
        (clone / "corpus" / f"part{d}.txt").write_text(
            "\n".join(f"line {i} of part {d}: the fox jumps over the dog number {i * d}." for i in range(40)) + "\n")
    (clone / "pictures").mkdir()
    rows = []
    for i in range(12):
        Image.new("RGB", (50, 40 + i), (20 * i, 100, 50)).save(clone / "pictures" / f"{i}.png")
        rows.append({"image": f"pictures/{i}.png", "caption": f"a green drawing with {i} leaves"})
    (clone / "pairs.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


@pytest.fixture(scope="module")
def readme(tmp_path_factory, openclipart_cache):
    folder = tmp_path_factory.mktemp("readme")
    clone = fresh_clone(folder)
    write_data(folder / "data")
    write_local_inputs(clone)
    return {"clone": clone, "data": folder / "data", "openclipart": openclipart_cache, "runs": {}, "sweeps": {},
            "by_words": {}}


def data_choices(command: Command) -> set[str]:
    """The data config(s) the command trains on: its data=, else its objectives' defaults."""
    if command.value("data"):
        return set(command.value("data").split(","))
    return {objective_data(o) for o in (command.value("objective") or "mae").split(",")}


def objective_data(objective: str) -> str:
    """The data config an objective's defaults pick, or the one of the objective it inherits (dinov2: dino)."""
    text = (ROOT / "configs" / "objective" / f"{objective}.yaml").read_text()
    found = re.search(r"override /data@_global_\.data: (\w+)", text)
    return found.group(1) if found else objective_data(re.search(r"^  - (\w+)$", text, re.MULTILINE).group(1))


def budget(command: Command, state: dict) -> list[str]:
    if command.program.startswith("train.py") or command.program == "sbatch":
        extra = [f"data.cache_dir={state['openclipart']}"] if data_choices(command) == {"openclipart"} else []
        return TRAIN_BUDGET + extra + (SLURM_LAUNCHER if command.value("hydra/launcher") == "slurm" else [])
    if command.program == "eval.py":
        protocol = command.value("protocol") or "knn"
        epochs = "epochs:" in (ROOT / "configs" / "protocol" / f"{protocol}.yaml").read_text()
        return ["max_train_samples=64", "max_val_samples=32", *(["protocol.epochs=1"] if epochs else [])]
    if command.program == "embed.py":
        return ["max_samples=64"]
    if command.program == "throughput.py":
        return ["data.batch_size=2"]
    return []


def made_real(command: Command, state: dict) -> list[str]:
    """The command's words with the README's placeholders replaced by what they stand for here."""
    clip = command.value("protocol") in ("zero_shot", "retrieval")
    stand_ins = {"RUN": "clip" if clip else "mae", MAE_RUN: "mae", "CLAP_RUN": "clap"}
    words = []
    for word in command.words:
        key, _, value = word.partition("=")
        if value in stand_ins:
            run = state["runs"].get(stand_ins[value])
            assert run, f"no {stand_ins[value]} run: the README command that trains it failed"
            word = f"{key}={run}"
        elif word == SWEEP:
            word = str(state["sweeps"][command.block])
        words.append(word.replace("/data/", f"{state['data']}/"))
    return words


# -- what they must write -----------------------------------------------------------------------------------------
def run_folders(clone: Path) -> set[Path]:
    return {p.parent for p in (clone / "runs").glob("**/config.yaml")}


def assert_run_folder(run: Path) -> None:
    """Its checkpoint, a train/loss row in metrics.csv, and its own wandb run holding only its own metrics."""
    assert (run / "checkpoints" / "last.ckpt").is_file(), run
    with (run / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert any(row.get("train/loss") for row in rows), f"{run}/metrics.csv has no train/loss row"
    runs = offline_runs(run)
    assert len(runs) == 1, runs
    for _ in range(30):  # wandb's service process may still be writing the file of a run that ran in this process
        logged = {key for row in history(runs[0]) for key in row if not key.startswith("pictures/")}  # images
        logged -= {"step", "wandb/runtime_s", "epoch"}
        if logged:
            break
        time.sleep(1)
    assert logged and logged <= set(rows[0]), logged - set(rows[0])


def assert_same_weights(run: Path, reference: Path) -> None:
    a, b = (torch.load(r / "checkpoints" / "last.ckpt", map_location="cpu", weights_only=True)["state_dict"]
            for r in (run, reference))
    assert list(a) == list(b)  # no `_orig_mod.` in the names
    for name, tensor in b.items():
        torch.testing.assert_close(a[name], tensor, rtol=1e-4, atol=1e-5, msg=name)


def choices(run: Path) -> dict[str, str]:
    lines = (run / "run_info.jsonl").read_text().splitlines()
    return json.loads(lines[-1])["choices"]


def check_outputs(command: Command, words: list[str], state: dict, new_runs: list[Path], out: str) -> None:
    clone = state["clone"]
    if command.program == "train.py":
        assert len(new_runs) == 1, new_runs
        run = new_runs[0]
        assert_run_folder(run)
        if choices(run)["objective"] == "mae":  # the README's pictures/
            assert list((run / "pictures").glob("step_*.png")), run
        state["runs"].setdefault(choices(run)["objective"], run)
        state["by_words"][tuple(words)] = run
        eager = tuple(w for w in words if w != "compile=true")
        if eager != tuple(words):  # compiled in place: the eager twin's parameter names (either resumes the other)
            assert_same_weights(run, state["by_words"][eager])  # and the same model, up to kernel rounding
    elif command.program in ("train.py -m", "sbatch"):
        jobs = 1
        for word in words:
            if "=" in word and "," in word.split("=", 1)[1]:  # a swept key: one job per value
                jobs *= len(word.split("=", 1)[1].split(","))
        assert len(new_runs) == jobs, new_runs
        for run in new_runs:
            assert_run_folder(run)
        if command.program == "sbatch":
            assert (new_runs[0].parent / f"{new_runs[0].name}.out").is_file()  # the log where the script says
        else:
            (sweep,) = {run.parent for run in new_runs}
            state["sweeps"][command.block] = sweep
            for run in new_runs:  # wandb runs named after their job, in one group named after the sweep
                record = offline_runs(run)[0].read_bytes()
                assert run.name.encode() in record and sweep.name.encode() in record
    elif command.program == "eval.py":
        checkpoint = Path(value_of(words, "checkpoint"))
        results = json.loads((checkpoint / "results.json").read_text())
        protocol = value_of(words, "protocol") or "knn"
        suffix = "@random_init" if value_of(words, "weights") == "random" else ""
        assert any(key.startswith(protocol) and key.endswith(suffix) for key in results), list(results)
    elif command.program == "embed.py":
        assert (clone / value_of(words, "out")).stat().st_size > 0
    elif command.program == "export.py":
        assert (clone / value_of(words, "out") / "model.safetensors").is_file()
    elif command.program == "compare.py":
        sweep = Path(words[words.index("compare.py") + 1])
        jobs = [run for run in run_folders(clone) if run.parent == sweep]
        groups = {(c["objective"], c["backbone"], c["data"]) for c in map(choices, jobs)}
        rows = [line for line in out.splitlines() if line.startswith("| ") and "objective" not in line
                and not line.startswith("|--")]
        shown = {tuple(cell.strip() for cell in row.strip("|").split("|")[:3]) for row in rows}
        assert shown == groups, (shown, groups)
        seeds = len(jobs) // len(groups)
        assert all(row.strip("|").split("|")[3].strip() == str(seeds) for row in rows), rows
        assert (sweep / "compare" / "table.md").is_file()


def run_command(command: Command, words: list[str], state: dict, request) -> subprocess.CompletedProcess:
    clone = state["clone"]
    env = dict(ENV, **dict(w.split("=", 1) for w in words if ASSIGNMENT.fullmatch(w)))
    words = [w for w in words if not ASSIGNMENT.fullmatch(w)]
    if command.program == "sbatch":
        request.getfixturevalue("slurm")
        script = next(i for i, w in enumerate(words) if w.endswith(".sbatch"))
        job = sbatch([*words[1:script], *SBATCH_ONE_CPU_NODE, *words[script:]], cwd=clone)
        state_name = wait_for_job(job, timeout=600)
        log = clone / "runs" / "slurm" / f"{job}.out"
        out = log.read_text() if log.is_file() else ""
        return subprocess.CompletedProcess(words, 0 if state_name == "COMPLETED" else 1, out, out)
    in_process = words[0] == "python" and words[1].endswith(".py") and command.value("hydra/launcher") is None
    if in_process:
        graphs = counters["stats"]["unique_graphs"]
        r = run_in_process(clone / words[1], words[2:], cwd=clone, env=env)
        if "compile=true" in words and r.returncode == 0:
            assert counters["stats"]["unique_graphs"] > graphs, "compile=true ran without compiling anything"
        return r
    if command.value("hydra/launcher") == "slurm":
        request.getfixturevalue("slurm")
    if words[0] == "python":
        words = [sys.executable, *words[1:]]
    return subprocess.run(words, cwd=clone, env=dict(os.environ, **env), capture_output=True, text=True,
                          timeout=900)


@pytest.mark.parametrize("command", [pytest.param(c, id=f"line{c.line}", marks=[needs_cxx] if "compile=true" in c.words
                                                  else []) for c in COMMANDS])
def test_readme_command(command: Command, readme, request):
    if command.untested:
        pytest.skip(f"README.md line {command.line}: {command.untested}")
    words = made_real(command, readme) + budget(command, readme)
    before = run_folders(readme["clone"])
    r = run_command(command, words, readme, request)
    assert r.returncode == 0, f"{command.text}\n{r.stdout[-2000:]}\n{r.stderr[-3000:]}"
    new_runs = sorted(run_folders(readme["clone"]) - before)
    check_outputs(command, words, readme, new_runs, r.stdout)
