"""The losses by name: the built-in ones (a line each, in the order --help lists them), a class
named as `package.module:Name`, and those other packages register under the entry-point group
`w2s_pipe.losses`. A name none of these knows is refused, never defaulted."""

from __future__ import annotations

from ...errors import W2SError
from ...plugins import Plugins
from .adaptconf import AdaptConf
from .augconf import AugConf
from .base import WeakLoss
from .evidential import Evidential
from .gt import GroundTruth
from .hard import Hard
from .kd import KD

BUILT_IN: dict[str, type[WeakLoss]] = {cls.name: cls for cls in (AdaptConf, AugConf, KD, Hard, Evidential, GroundTruth)}
PLUGINS = Plugins("--loss", "w2s_pipe.losses", WeakLoss, tuple(BUILT_IN))
_found: dict[str, type[WeakLoss]] = {}


def loss_class(name: str) -> type[WeakLoss]:
    """The class of loss `name`: a built-in, `package.module:Name`, or an entry point's; else a
    one-line error naming --loss and what it accepts."""
    if name in BUILT_IN:
        return BUILT_IN[name]
    if name not in _found:
        _found[name] = PLUGINS.find(name)
    return _found[name]


find_loss = loss_class  # where a config's own `loss_class` property would shadow the name


def option_pairs(items) -> dict:
    """--loss-options' NAME=VALUE pairs (or a study's mapping) as {name: value}."""
    if isinstance(items, dict):
        return dict(items)
    pairs = {}
    for item in items or ():
        name, eq, value = str(item).partition("=")
        if not eq or not name.strip():
            raise W2SError(f"--loss-options {item!r} is invalid: give NAME=VALUE pairs, comma-separated",
                           option="--loss-options")
        pairs[name.strip()] = value.strip()
    return pairs


def is_loss(name) -> bool:
    """Whether `name` names a loss (a study's `select:` key for one, say)."""
    try:
        loss_class(name)
    except W2SError:
        return False
    return True


def loss_names() -> tuple[str, ...]:
    """The built-in losses and the installed plug-ins' names, in --help's order."""
    return PLUGINS.names()


def build_loss(name: str, values: dict) -> WeakLoss:
    """An instance of loss `name` holding its knobs' values, taken from `values` (a run's settings:
    every train option by name, and `loss_options`)."""
    cls = loss_class(name)
    return cls(**{k: values[k] for k in (*cls.knobs, *cls.settings)}, loss_options=values.get("loss_options"))
