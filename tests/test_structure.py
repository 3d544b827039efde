"""The shape the code keeps (DESIGN.md, STYLE.md), checked from its source with `ast`: dependencies
run one way (cli -> stages -> pipeline, storage; inside pipeline/, its packages in the order of
PIPELINE_ORDER), no two modules import each other, imports sit at the top of a module unless a
comment says why, no module reaches into another's privates, each user choice is defined once, and
the stages stay short enough to read top to bottom."""

from __future__ import annotations

import ast
from pathlib import Path

import click
import pytest

from w2s_pipe.cli import cli
from w2s_pipe.pipeline.config import choices
from w2s_pipe.pipeline.config.options import NO_DEFAULT, options_of
from w2s_pipe.pipeline.losses.registry import BUILT_IN
from w2s_pipe.stages.demo_config import DemoConfig
from w2s_pipe.stages.eval_config import EvalConfig
from w2s_pipe.stages.inspect_config import InspectConfig
from w2s_pipe.stages.label_config import LabelConfig
from w2s_pipe.stages.prepare_config import PrepareCifarConfig, PrepareDigitsConfig, PrepareFolderConfig
from w2s_pipe.stages.report_config import ReportConfig
from w2s_pipe.stages.study_options import StudyOptions
from w2s_pipe.stages.train_config import TrainConfig
from w2s_pipe.stages.verify_config import VerifyConfig

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("pipeline", "stages", "storage")
SOURCES = sorted(p for pkg in PACKAGES for p in (ROOT / pkg).rglob("*.py")) + [ROOT / "cli.py"]
# Private names of other libraries used on purpose: os._exit in a loading process that must end at
# once, and timm's Mixup._mix_batch, whose lambda the weak labels are mixed with (mixing.py).
ALLOWED_PRIVATE = {"os._exit", "self.timm._mix_batch"}


def tree(path: Path) -> ast.Module:
    return ast.parse(path.read_text(), filename=str(path))


# pipeline/'s packages, each importing only those before it (and storage): where a thing is made
# tells what it may use (pipeline/__init__.py says what each holds).
PIPELINE_ORDER = ("losses", "ensembles", "config", "runtime", "sources", "image", "views", "models", "weak", "loaders", "evaluation", "train",
                  "report")


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


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path) -> set[str]:
    """The project modules `path` imports (a name that is itself a module counts as that module)."""
    found = set()
    for module, names in project_imports(path):
        for name in names:
            sub = f"{module}.{name}" if module else name
            is_module = (ROOT / sub.replace(".", "/")).with_suffix(".py").exists() or (ROOT / sub.replace(".", "/")).is_dir()
            found.add(sub if is_module else module)
    return {m for m in found if m and m != "errors"} - {""}


def test_no_two_modules_import_each_other():
    """No import cycle of any length between the project's modules, lazy imports included."""
    graph = {module_name(p): imported_modules(p) for p in SOURCES}
    seen, on_path, cycles = set(), [], []

    def visit(node):
        if node in on_path:
            cycles.append(on_path[on_path.index(node):] + [node])
            return
        if node in seen:
            return
        seen.add(node)
        on_path.append(node)
        for nxt in sorted(graph.get(node, ())):
            visit(nxt)
        on_path.pop()

    for node in sorted(graph):
        visit(node)
    assert not cycles, [" -> ".join(c) for c in cycles]


def test_pipeline_packages_import_only_those_before_them():
    found = []
    for path in SOURCES:
        parts = path.relative_to(ROOT).parts
        if parts[0] != "pipeline" or len(parts) < 3:
            continue
        rank = PIPELINE_ORDER.index(parts[1])
        for module in imported_modules(path):
            target = module.split(".")
            if target[0] == "pipeline" and len(target) > 1 and PIPELINE_ORDER.index(target[1]) > rank:
                found.append(f"{path.relative_to(ROOT)} ({parts[1]}) imports {module}")
    assert not found, found
    assert sorted(p.name for p in (ROOT / "pipeline").iterdir() if p.is_dir() and p.name != "__pycache__") == \
        sorted(PIPELINE_ORDER)


def test_imports_sit_at_the_top_unless_a_comment_says_why():
    """An import inside a function (a heavy library loaded only when chosen, or a module --help must
    not load) carries a comment on its line or the line above saying so; cli.py imports each stage
    when its command runs, by design."""
    found = []
    for path in SOURCES:
        if path.name == "cli.py":
            continue
        lines = path.read_text().splitlines()
        module = tree(path)
        for node in ast.walk(module):
            if isinstance(node, (ast.Import, ast.ImportFrom)) and node not in module.body and not (
                    isinstance(node, ast.ImportFrom) and node.module == "__future__"):
                said = "#" in lines[node.lineno - 1] or "#" in lines[node.lineno - 2]
                guarded = any(isinstance(n, ast.Try) and node in ast.walk(n) for n in ast.walk(module))
                if not (said or guarded):
                    found.append(f"{path.relative_to(ROOT)}:{node.lineno} {ast.unparse(node)}")
    assert not found, found


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
    """cli -> stages -> pipeline, storage; storage knows nothing of pipeline but its options' one
    definition (pipeline/config, the standard library only: a store records its view recipe); no stage imports another
    stage (demo and the study's modules, study*.py, excepted: composing the stages is what they are for; a stage's
    config module is not a stage)."""
    found = []
    for path in SOURCES:
        layer = path.relative_to(ROOT).parts[0]
        for module, _ in project_imports(path):
            top = module.split(".")[0]
            if (layer in ("pipeline", "storage") and top in ("stages", "cli")) or (
                    layer == "storage" and top == "pipeline" and not module.startswith("pipeline.config")) \
                    or (layer == "stages" and top == "stages" and path.name != "demo.py" and not path.name.startswith("study")
                        and not module.endswith("_config")):
                found.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not found, found


def test_no_function_is_longer_than_a_screen_or_two():
    """Anywhere outside tests: no function over 80 lines, so each reads in one sitting."""
    found = [f"{path.relative_to(ROOT)}::{node.name} is {node.end_lineno - node.lineno + 1} lines"
             for path in SOURCES + sorted((ROOT / "bench").glob("*.py")) for node in ast.walk(tree(path))
             if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.end_lineno - node.lineno + 1 > 80]
    assert not found, found


COMMANDS = {"label": LabelConfig, "train": TrainConfig, "eval": EvalConfig, "prepare digits": PrepareDigitsConfig,
            "prepare cifar10": PrepareCifarConfig, "prepare cifar100": PrepareCifarConfig,
            "prepare folder": PrepareFolderConfig, "report": ReportConfig, "inspect": InspectConfig,
            "verify": VerifyConfig, "study": StudyOptions, "demo": DemoConfig}


def command(name: str) -> click.Command:
    found = cli
    for part in name.split():
        found = found.commands[part]
    return found


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_commands_options_are_its_configs_fields(name):
    """Every option of `label`, `train`, `eval` and `prepare` is a field of its config, with the
    field's default (a --quiet flag's inverse), choices and help, and every field that is an option is
    on the command line."""
    params = {p.name: p for p in command(name).params}
    specs = dict((f.name, (f, spec)) for f, spec in options_of(COMMANDS[name]))
    assert set(params) == set(specs), set(params) ^ set(specs)
    for field_name, (f, spec) in specs.items():
        param = params[field_name]
        assert param.required == (f.default is NO_DEFAULT), field_name
        if not param.required:
            default = ",".join(map(str, f.default)) if isinstance(f.default, tuple) else f.default
            assert param.default == (True if spec.negate else default), field_name
        assert spec.help and (param.help == spec.help if isinstance(param, click.Option) else spec.argument), field_name
        if spec.choices and not spec.open_choices:  # an open choice (--loss) is checked by its config
            assert tuple(param.type.choices) == tuple(spec.choices), field_name


def test_recipe_keys_and_the_stores_view_recipe_come_from_the_configs():
    from w2s_pipe.pipeline.config.groups import RECIPE_DEFAULTS, ViewRecipe
    from w2s_pipe.stages.train_config import recipe_options

    assert set(recipe_options()) == {f.name for f, spec in options_of(TrainConfig) if spec.recipe}
    recorded = LabelConfig.tiny(weak_checkpoint="w.pt", views=2).recipe((0.75, 4 / 3))
    assert set(recorded) - {"ratio"} == set(RECIPE_DEFAULTS) == {f.name for f, _ in options_of(ViewRecipe)} - {"seed"}


def test_each_choice_on_the_command_line_is_the_one_definition():
    """Every click.Choice of a stage option is a tuple of pipeline/config/choices.py."""
    defined = {tuple(v) for v in vars(choices).values() if isinstance(v, tuple)} | {tuple(BUILT_IN)}
    seen = 0

    def walk(group):
        nonlocal seen
        for cmd in group.commands.values():
            if isinstance(cmd, click.Group):
                walk(cmd)
                continue
            for param in cmd.params:
                if isinstance(param.type, click.Choice):
                    assert tuple(param.type.choices) in defined, f"{cmd.name} {param.opts[0]}: {param.type.choices}"
                    seen += 1

    walk(cli)
    assert seen >= 9  # label, train and eval's precision and decode, loss, ramp, pick, on-bad-sample


def test_every_loader_starts_its_workers_from_the_fork_server():
    """A DataLoader is made in loaders/workers.py alone, whose loaders never fork from the stage (a
    fork from a threaded process can hang: issue 29)."""
    found = [f"{path.relative_to(ROOT)}:{node.lineno}" for path in SOURCES for node in ast.walk(tree(path))
             if isinstance(node, ast.Call) and ast.unparse(node.func).split(".")[-1] == "DataLoader"
             and path != ROOT / "pipeline" / "loaders" / "workers.py"]
    assert not found, found


@pytest.mark.parametrize("path", sorted((ROOT / "pipeline" / "config").glob("*.py")), ids=lambda p: p.name)
def test_config_imports_nothing_heavy(path):
    """pipeline/config is what `w2s-pipe --help` reads: the standard library and itself only."""
    imported = {alias.name.split(".")[0] for node in ast.walk(tree(path)) if isinstance(node, ast.Import)
                for alias in node.names}
    imported |= {node.module.split(".")[0] for node in ast.walk(tree(path))
                 if isinstance(node, ast.ImportFrom) and node.module and not node.level}
    assert imported <= {"__future__", "dataclasses", "math", "typing"}, imported
