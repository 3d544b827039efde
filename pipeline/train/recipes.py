"""Training recipes: YAML files of `train` options, shipped by name or given as a path.

    w2s-pipe recipes                                  # the shipped ones, each with the command that runs it
    w2s-pipe train --config cifar_v0 --strong cifar_resnet56 --labels STORE --lr 0.1   # the command line wins

A recipe maps `train` option names (`weight_decay` or `weight-decay`) to values; every key must be
an option, and an unknown one is a one-line error naming it and the file. Each shipped file opens
with the exact command that runs it, then says where its numbers come from.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
    raise W2SError(f"--config {name!r}: no such recipe ({names}) or file")


def load_recipe(name: str, options: set[str]) -> dict:
    """{option: value} from a recipe; `options` are the option names it may set (underscored)."""
    import yaml

    path = recipe_path(name)
    try:
        doc = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise W2SError(f"{path}: not a YAML recipe ({first})") from None
    if doc is None:
        return {}
    if not isinstance(doc, dict):
        raise W2SError(f"{path}: a recipe is a mapping of option: value, not a {type(doc).__name__}")
    out = {}
    for key, value in doc.items():
        option = str(key).replace("-", "_")
        if option not in options:
            raise W2SError(f"{path}: unknown key {key!r}; a recipe sets `train` options (see w2s-pipe train --help)")
        out[option] = value
    return out
