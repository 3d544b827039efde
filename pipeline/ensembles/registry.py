"""The fixed ways of combining an ensemble, by name: the built-in ones, a class named as
`package.module:Name`, and those other packages register under the entry-point group
`w2s_pipe.ensembles`. (The step-wise ways are weak/members.py's: STEP_WISE.)"""

from __future__ import annotations

from ...errors import W2SError
from ...plugins import Plugins
from .base import Combination
from .mean_logit import MeanLogit
from .mean_prob import MeanProb
from .vote import Vote

BUILT_IN: dict[str, type[Combination]] = {cls.name: cls for cls in (MeanProb, MeanLogit, Vote)}
STEP_WISE = ("learned", "learned-sample", "specialist")  # combined with the student at each step (weak/members.py)
PLUGINS = Plugins("--ensemble", "w2s_pipe.ensembles", Combination, (*BUILT_IN, *STEP_WISE))
_found: dict[str, type[Combination]] = {}


def combination(name: str) -> Combination:
    """The fixed combination `name`: a built-in, `package.module:Name`, or an entry point's; else a
    one-line error naming --ensemble and what it accepts."""
    if name in BUILT_IN:
        return BUILT_IN[name]()
    if name in STEP_WISE:
        raise PLUGINS.invalid(name, "combined at each step with the student, not a fixed combination")
    if name not in _found:
        _found[name] = PLUGINS.find(name)
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
