"""The fixed ways of combining an ensemble, by name: the built-in ones, a class named as
`package.module:Name`, and those other packages register under the entry-point group
`w2s_pipe.ensembles`. (The step-wise ways are weak/members.py's: STEP_WISE.)"""

from __future__ import annotations

import importlib
import importlib.metadata

from ...errors import W2SError
from .base import Combination
from .mean_logit import MeanLogit
from .mean_prob import MeanProb
from .vote import Vote

BUILT_IN: dict[str, type[Combination]] = {cls.name: cls for cls in (MeanProb, MeanLogit, Vote)}
STEP_WISE = ("learned", "learned-sample", "specialist")  # combined with the student at each step (weak/members.py)
ENTRY_POINTS = "w2s_pipe.ensembles"
_found: dict[str, type[Combination]] = {}


def combination(name: str) -> Combination:
    """The fixed combination `name`: a built-in, `package.module:Name`, or an entry point's; else a
    one-line error naming --ensemble and what it accepts."""
    if name in BUILT_IN:
        return BUILT_IN[name]()
    if name not in _found:
        _found[name] = _load(name)
    return _found[name]()


def is_fixed(name) -> bool:
    """Whether `name` is a fixed combination (not a step-wise way, nor unknown)."""
    if not name or name in STEP_WISE:
        return False
    try:
        combination(name)
    except W2SError:
        return False
    return True


def ensemble_names() -> tuple[str, ...]:
    return (*BUILT_IN, *STEP_WISE, *(ep.name for ep in importlib.metadata.entry_points(group=ENTRY_POINTS)))


def _invalid(name: str, why: str) -> W2SError:
    return W2SError(f"--ensemble {name!r} is invalid: {why}; choose one of {', '.join(ensemble_names())}, or name a "
                    "class as package.module:Name", option="--ensemble")


def _load(name: str) -> type[Combination]:
    if ":" in name:
        module, _, attr = name.partition(":")
        try:
            found = getattr(importlib.import_module(module), attr)
        except ImportError as exc:
            raise _invalid(name, f"cannot import {module} ({exc})") from None
        except AttributeError:
            raise _invalid(name, f"{module} has no {attr}") from None
    else:
        points = [ep for ep in importlib.metadata.entry_points(group=ENTRY_POINTS) if ep.name == name]
        if not points:
            raise _invalid(name, "no such ensemble")
        try:
            found = points[0].load()
        except ImportError as exc:
            raise _invalid(name, f"its entry point {points[0].value} cannot be imported ({exc})") from None
    if not (isinstance(found, type) and issubclass(found, Combination)):
        raise _invalid(name, "not a subclass of w2s_pipe.pipeline.ensembles.base.Combination")
    return found
