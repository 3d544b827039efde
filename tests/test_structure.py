"""The shape the code keeps (DESIGN.md, STYLE.md), checked from its source with `ast`: dependencies
run one way, no module reaches into another's privates, each user choice is defined once, and the
stages stay short enough to read top to bottom."""

from __future__ import annotations

import ast
from pathlib import Path

import click

from w2s_pipe.cli import cli
from w2s_pipe.pipeline import choices

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages", "storage")
SOURCES = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")) + [ROOT / "cli.py"]
# Private names of other libraries used on purpose: os._exit in a loading process that must end at
# once, and timm's Mixup._mix_batch, whose lambda the weak labels are mixed with (mixing.py).
ALLOWED_PRIVATE = {"os._exit", "self.timm._mix_batch"}
LONGEST_STAGE_FUNCTION = 120
ENTRY_FUNCTIONS = {"label.py": "run_label", "train.py": "run_train"}


def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


def project_imports(path: Path):
    """(module path relative to the package root, imported names) of each project import in `path`."""
    package = path.relative_to(ROOT).parent.parts
    for node in ast.walk(tree(path)):
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package[: len(package) - node.level + 1]
                module = ".".join([*base, *(node.module.split(".") if node.module else [])])
            elif node.module and node.module.startswith("w2s_pipe"):
                module = node.module.removeprefix("w2s_pipe").lstrip(".")
            else:
                continue
            yield module, [a.name for a in node.names]


def test_nothing_imports_another_modules_private_names():
    found = [f"{path.relative_to(ROOT)} imports {name} from {module}"
             for path in SOURCES + sorted((ROOT / "tests").glob("*.py")) for module, names in project_imports(path)
             for name in names if name.startswith("_") and not name.startswith("__")]
    assert not found, found


def test_no_private_attribute_of_another_object():
    found = [f"{path.relative_to(ROOT)}:{node.lineno} reads {ast.unparse(node)}" for path in SOURCES
             for node in ast.walk(tree(path))
             if isinstance(node, ast.Attribute) and node.attr.startswith("_") and not node.attr.startswith("__")
             and not (isinstance(node.value, ast.Name) and node.value.id in ("self", "cls"))
             and ast.unparse(node) not in ALLOWED_PRIVATE]
    assert not found, found


def test_dependencies_run_one_way():
    """cli -> stages -> pipeline, storage; storage knows nothing of pipeline; no stage imports another
    stage (demo excepted: composing the stages is what it is for; a stage's config module is not a stage)."""
    found = []
    for path in SOURCES:
        layer = path.relative_to(ROOT).parts[0]
        for module, _ in project_imports(path):
            top = module.split(".")[0]
            if (layer in ("pipeline", "storage") and top in ("stages", "cli")) or (layer == "storage" and top == "pipeline") \
                    or (layer == "stages" and top == "stages" and path.name != "demo.py" and not module.endswith("_config")):
                found.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not found, found


def test_stages_read_top_to_bottom():
    """No function in stages/ longer than ~120 lines; label's and train's entry functions ~100."""
    for path in sorted((ROOT / "stages").glob("*.py")):
        for node in ast.walk(tree(path)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                assert length <= LONGEST_STAGE_FUNCTION, f"{path.name}::{node.name} is {length} lines"
                if ENTRY_FUNCTIONS.get(path.name) == node.name:
                    assert length <= 115, f"{path.name}::{node.name} is {length} lines"


def test_each_choice_on_the_command_line_is_the_one_definition():
    """Every click.Choice of a stage option is a tuple of pipeline/choices.py (report's and inspect's
    output formats are their own)."""
    defined = {tuple(v) for v in vars(choices).values() if isinstance(v, tuple)} | {tuple(choices.LOSSES)}
    seen = 0

    def walk(group):
        nonlocal seen
        for cmd in group.commands.values():
            if isinstance(cmd, click.Group):
                walk(cmd)
                continue
            for param in cmd.params:
                if isinstance(param.type, click.Choice) and param.name != "fmt":
                    assert tuple(param.type.choices) in defined, f"{cmd.name} {param.opts[0]}: {param.type.choices}"
                    seen += 1

    walk(cli)
    assert seen >= 9  # label, train and eval's precision and decode, loss, ramp, pick, on-bad-sample


def test_every_loader_starts_its_workers_from_the_fork_server():
    """A DataLoader is made in data/workers.py alone, whose loaders never fork from the stage (a
    fork from a threaded process can hang: issue 29)."""
    found = [f"{path.relative_to(ROOT)}:{node.lineno}" for path in SOURCES for node in ast.walk(tree(path))
             if isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] == "DataLoader"
             and path != ROOT / "pipeline" / "data" / "workers.py"]
    assert not found, found


def test_choices_import_nothing_heavy():
    imported = {alias.name.split(".")[0] for node in ast.walk(tree(ROOT / "pipeline" / "choices.py"))
                if isinstance(node, ast.Import) for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree(ROOT / "pipeline" / "choices.py"))
                 if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    assert imported <= {"__future__", "dataclasses"}, imported
