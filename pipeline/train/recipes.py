"""Training recipes: YAML files of `train` options, shipped by name or given as a path.

    w2s-pipe recipes                                  # the shipped ones, each with the command that runs it
    w2s-pipe train --config cifar_v0 --strong cifar_resnet56 --labels STORE --lr 0.1   # the command line wins

A recipe maps `train` option names (`weight_decay` or `weight-decay`) to values; every key must be
an option, and an unknown one is a one-line error naming it and the file. Each value is converted
to its option's type as the command line converts it (`1e-3` is a number; a list, a mapping or a
null where a number belongs is a one-line error naming the key and the file), and then goes through
the same checks as the option given on the command line (`TrainConfig`). Each shipped file opens
with the exact command that runs it, then says where its numbers come from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from ...errors import W2SError

SHIPPED = Path(__file__).with_name("recipes")


@dataclass(frozen=True)
class Recipe:
    name: str
    path: Path
    command: str  # the first comment line
    about: str  # the comment lines after it


def shipped() -> list[Recipe]:
    return [_describe(p) for p in sorted(SHIPPED.glob("*.yaml"))]


def describe_recipes() -> list[str]:
    """`w2s-pipe recipes`: each shipped recipe's name, the command that runs it, and what it is."""
    return [line for r in shipped() for line in (r.name, f"  {r.command}", f"  {r.about}", "")]


def _describe(path: Path) -> Recipe:
    comments = []
    for line in path.read_text().splitlines():
        if not line.startswith("#"):
            break
        comments.append(line.lstrip("#").strip())
    return Recipe(path.stem, path, comments[0] if comments else "", " ".join(comments[1:]))


def recipe_path(name: str) -> Path:
    """A shipped recipe's name, or the path of a YAML file."""
    if (SHIPPED / f"{name}.yaml").is_file():
        return SHIPPED / f"{name}.yaml"
    path = Path(name).expanduser()
    if path.is_file():
        return path
    names = ", ".join(r.name for r in shipped())
    raise W2SError(f"--config {name!r}: no such recipe ({names}) or file", option="--config")


NEEDS = {"bool": "true or false", "int": "a whole number", "float": "a number", "str": "a string"}


def convert(value, annotation: str, where: str):
    """`value` as the type of a config field annotated `annotation` ("float | None", "int", "bool",
    "str"), accepting what the command line accepts for it; else a one-line error beginning `where`."""
    kinds = [k.strip() for k in str(annotation).split("|")]
    kind = next((k for k in kinds if k != "None"), "str")
    if value is None:
        if "None" in kinds:
            return None
        raise W2SError(f"{where} is null; it needs {NEEDS.get(kind, kind)}")
    shown = f"{value!r}" if len(repr(value)) <= 40 else f"{repr(value)[:37]}..."
    wrong = W2SError(f"{where} is {shown} ({_kind_of(value)}); it needs {NEEDS.get(kind, kind)}")
    if kind == "bool":
        if isinstance(value, bool):
            return value
        raise wrong
    if isinstance(value, (bool, list, dict)):
        raise wrong
    if kind == "str":
        return str(value) if isinstance(value, (str, int, float)) else _raise(wrong)
    try:
        number = float(value) if kind == "float" else _whole(value)
    except (TypeError, ValueError):
        raise wrong from None
    return number


def _whole(value) -> int:
    if isinstance(value, float) and not value.is_integer():
        raise ValueError(value)
    return int(value)


def _kind_of(value) -> str:
    return {bool: "true/false", list: "a list", dict: "a mapping", str: "a string"}.get(type(value), type(value).__name__)


def _raise(exc: Exception):
    raise exc


def read_yaml(path, what: str):
    """The YAML document at `path` (a recipe, a study), or a one-line error naming the file and the
    parser's first complaint."""
    try:
        return yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise W2SError(f"{path}: not a YAML {what} ({first})") from None


def load_recipe(name: str, options: dict[str, str]) -> dict:
    """{option: value} from a recipe; `options` maps the option names it may set (underscored) to
    their config field's type annotation (`train_config.recipe_options()`), which each value is
    converted to."""
    path = recipe_path(name)
    doc = read_yaml(path, "recipe")
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise W2SError(f"{path}: a recipe is a mapping of option: value, not a {type(doc).__name__}")
    out = {}
    for key, value in doc.items():
        option = str(key).replace("-", "_")
        if option not in options:
            raise W2SError(f"{path}: unknown key {key!r}; a recipe sets `train` options (see w2s-pipe train --help)")
        out[option] = convert(value, options[option], f"{path}: key {key!r}")
    return out
