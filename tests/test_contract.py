"""The shape of the package: imports go one way (../shared/design/architecture.md, README "Architecture"), configs
become objects in the assembly layer only, and generic code names no particular objective."""
from __future__ import annotations

import ast
import io
import tokenize
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "selfsup"
SOURCES = sorted(PACKAGE.rglob("*.py"))

# What the objectives are called in code: class names and module names.
OBJECTIVE_NAMES = {"MAE", "MLM", "SimCLR", "BYOL", "CLIP", "DualEncoder", "DINO", "DINOHead", "DINOv2", "VICReg",
                   "BarlowTwins", "MoCoV3", "mae", "mlm", "simclr", "byol", "clip", "dino", "dinov2", "vicreg",
                   "barlow_twins", "mocov3", "IJEPA", "ijepa"}
# Metric keys that one objective logs.
OBJECTIVE_KEYS = ("mlm_loss", "nsp_loss", "nsp_accuracy", "masked_accuracy", "image_to_text_accuracy",
                  "text_to_image_accuracy", "logit_scale", "target_momentum", "teacher_temp", "teacher_momentum",
                  "invariance", "covariance", "on_diagonal", "off_diagonal", "teacher_entropy", "teacher_kl_uniform",
                  "context_patches", "target_patches")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_selfsup_modules(path: Path) -> set[str]:
    """The selfsup modules a file imports (a `from selfsup.x import y` imports selfsup.x, or selfsup.x.y if that
    is a module)."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names if a.name.startswith("selfsup"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("selfsup"):
            names.add(node.module)
            for alias in node.names:
                candidate = f"{node.module}.{alias.name}"
                if (ROOT / Path(*candidate.split("."))).with_suffix(".py").is_file():
                    names.add(candidate)
    return names


def test_every_selfsup_import_is_at_module_level():
    inner = []
    for path in SOURCES:
        tree = ast.parse(path.read_text())
        for func in (n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))):
            for node in ast.walk(func):
                module = node.module if isinstance(node, ast.ImportFrom) else None
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
                if (module or "").startswith("selfsup") or any(n.startswith("selfsup") for n in names):
                    inner.append(f"{path.relative_to(ROOT)}:{node.lineno}")
    assert not inner, inner


def test_no_import_circle():
    graph = {module_name(p): imported_selfsup_modules(p) for p in SOURCES}
    state: dict[str, str] = {}

    def visit(name: str, trail: list[str]) -> None:
        if state.get(name) == "done":
            return
        assert state.get(name) != "open", " -> ".join([*trail, name])
        state[name] = "open"
        for dep in sorted(graph.get(name, ())):
            if dep in graph and dep != name:
                visit(dep, [*trail, name])
        state[name] = "done"

    for name in graph:
        visit(name, [])


# (part, what it never imports): ../shared/design/architecture.md
NEVER = [
    ("selfsup.backbones", ("selfsup.objectives", "selfsup.data", "selfsup.module", "selfsup.evaluation",
                           "selfsup.callbacks", "selfsup.assemble", "selfsup.commands")),
    ("selfsup.objectives", ("selfsup.data", "selfsup.module", "selfsup.evaluation", "selfsup.callbacks",
                            "selfsup.assemble", "selfsup.commands")),
    ("selfsup.data", ("selfsup.backbones", "selfsup.objectives", "selfsup.module", "selfsup.evaluation",
                      "selfsup.callbacks", "selfsup.assemble", "selfsup.commands")),
    ("selfsup.evaluation", ("selfsup.objectives", "selfsup.callbacks", "selfsup.assemble", "selfsup.commands")),
    ("selfsup.callbacks", ("selfsup.assemble", "selfsup.commands")),
    ("selfsup.module", ("selfsup.assemble", "selfsup.commands", "selfsup.callbacks")),
    ("selfsup.instantiate", ("selfsup.",)),  # the bottom: only selfsup.errors
    ("selfsup.assemble", ("selfsup.commands",)),
]


@pytest.mark.parametrize("part,forbidden", NEVER, ids=[p for p, _ in NEVER])
def test_imports_go_one_way(part, forbidden):
    allowed_below = {"selfsup.errors"} if part == "selfsup.instantiate" else set()
    bad = []
    for path in SOURCES:
        name = module_name(path)
        if name != part and not name.startswith(part + "."):
            continue
        for dep in imported_selfsup_modules(path) - allowed_below:
            if any(dep == f.rstrip(".") or dep.startswith(f if f.endswith(".") else f + ".") for f in forbidden):
                bad.append(f"{name} imports {dep}")
    assert not bad, bad


def test_only_the_bottom_layer_calls_hydra_instantiate():
    callers = []
    for path in SOURCES:
        if path.name == "instantiate.py":
            continue
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module == "hydra.utils" and any(
                    a.name in ("instantiate", "call") for a in node.names):
                callers.append(str(path.relative_to(ROOT)))
    assert not callers, callers


def code_tokens(path: Path) -> list[tokenize.TokenInfo]:
    """A file's names and non-docstring strings (comments and docstrings explain; they may cite papers)."""
    tree = ast.parse(path.read_text())
    docstrings = set()
    for node in ast.walk(tree):
        body = getattr(node, "body", None)
        if isinstance(body, list) and body and isinstance(body[0], ast.Expr) and isinstance(
                getattr(body[0], "value", None), ast.Constant) and isinstance(body[0].value.value, str):
            docstrings.add(body[0].lineno)
    tokens = tokenize.generate_tokens(io.StringIO(path.read_text()).readline)
    return [t for t in tokens
            if t.type == tokenize.NAME or (t.type == tokenize.STRING and t.start[0] not in docstrings)]


def test_generic_code_names_no_particular_objective():
    """Outside selfsup/objectives/, no code names an objective's class or module or one of its metric keys: what
    an objective needs of generic code is in the contract of objectives/base.py."""
    found = []
    for path in SOURCES:
        if path.is_relative_to(PACKAGE / "objectives"):
            continue
        for token in code_tokens(path):
            text = token.string
            named = text in OBJECTIVE_NAMES if token.type == tokenize.NAME else (
                any(key in text for key in OBJECTIVE_KEYS)
                or any(f"objectives.{n}" in text or f"objective={n}" in text for n in OBJECTIVE_NAMES))
            if named:
                found.append(f"{path.relative_to(ROOT)}:{token.start[0]}: {text}")
    assert not found, found


def test_the_scan_sees_a_planted_name(tmp_path):
    """The check above would see an objective's class in generic code (and not in a docstring)."""
    planted = tmp_path / "planted.py"
    planted.write_text('"""MAE in a docstring is fine."""\nfrom x import CLIP\nkey = "mlm_loss"\n')
    names = [t.string for t in code_tokens(planted)]
    assert "CLIP" in names and '"mlm_loss"' in names and not any("MAE" in n for n in names)
