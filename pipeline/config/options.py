"""Each option defined once: a config dataclass field carries the option's default, its choices or
range, and its help; the command line (cli.py makes click options from them), the recipes' keys
and the configs' own checks all read that one definition.

    @dataclass(frozen=True, kw_only=True)
    class Objective:
        threshold: float = option(0.5, "adaptconf's tau ...", above=0)

`check(cfg)` applies every field's choices and range, naming the option in the error (which carries
the option as data: `W2SError.option`). Imports nothing heavy: `w2s-pipe --help` reads it.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from typing import Any

from ...errors import W2SError

NO_DEFAULT = dataclasses.MISSING


@dataclass(frozen=True)
class Option:
    """What the command line needs of a config field, beside its name, type and default."""

    help: str
    flag: str | None = None  # the command-line name [default: --field-name]
    choices: tuple | None = None
    low: float | None = None  # the range: low <= value (low < value with above=)
    high: float | None = None  # value <= high (value < high with below=)
    low_open: bool = False
    high_open: bool = False
    default_text: str | None = None  # what a None default means, for --help ("[default: ...]")
    secondary: str | None = None  # a boolean's off switch (--no-channels-last), where None is a third state
    metavar: str | None = None
    path: str | None = None  # "dir" or "file": a path (and "dir!" or "file!": one that must exist)
    recipe: bool = True  # a recipe may set it (train --config)
    negate: bool = False  # a flag that sets the field False (--quiet: progress)
    argument: bool = False  # positional (prepare folder SRC), not --name
    nargs: int | None = None  # several words: a positional's (-1: one or more: inspect STORES...), an option's (2)
    unit: str | None = None  # of the range ("must be at least 8 pixels")
    aliases: tuple[str, ...] = ()  # older names the command line still takes (--kd-weight for --weak-weight)
    open_choices: bool = False  # the choices are those --help lists; the config's own check accepts others

    def problem(self, value) -> str | None:
        """Why `value` is invalid for this option, or None."""
        if value is None:
            return None
        if self.choices is not None and value not in self.choices and not self.open_choices:
            return f"choose one of {', '.join(str(c) for c in self.choices)}"
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            return None
        if isinstance(value, float) and math.isnan(value):
            return "is not a number"
        too_low = self.low is not None and (value <= self.low if self.low_open else value < self.low)
        too_high = self.high is not None and (value >= self.high if self.high_open else value > self.high)
        return self.range_text() + (f" {self.unit}" if self.unit else "") if too_low or too_high else None

    def range_text(self) -> str | None:
        """The range in words, as the errors and --help say it."""
        low, high = self.low, self.high
        if low is None and high is None:
            return None
        if high is None:
            if low == 0:
                return "must be positive" if self.low_open else "must not be negative"
            return f"must be above {_num(low)}" if self.low_open else f"must be at least {_num(low)}"
        if not self.low_open and not self.high_open:
            return f"must be between {_num(low)} and {_num(high)}"
        first = f"above {_num(low)}" if self.low_open else f"at least {_num(low)}"
        second = f"below {_num(high)}" if self.high_open else f"at most {_num(high)}"
        return f"must be {first} and {second}"


def _num(x: float) -> str:
    return str(int(x)) if float(x).is_integer() else f"{x:g}"


def option(default=NO_DEFAULT, help: str = "", *, at_least=None, above=None, at_most=None, below=None,
           **spec) -> Any:
    """A config field that is a command-line option: its default, its help and what it accepts
    (`choices=`, or a range: `at_least`/`above` and `at_most`/`below`)."""
    low, low_open = (above, True) if above is not None else (at_least, False)
    high, high_open = (below, True) if below is not None else (at_most, False)
    meta = {"option": Option(help=help, low=low, high=high, low_open=low_open, high_open=high_open, **spec)}
    if default is NO_DEFAULT:
        return field(metadata=meta)
    return field(default=default, metadata=meta)


def like(other: dataclasses.Field, default=NO_DEFAULT, **changes) -> Any:
    """The option `other` (another config's field) with another default or help: one definition,
    a command's own default (label's batch of 256 against train's 128)."""
    spec = dataclasses.replace(other.metadata["option"], **changes)
    if default is NO_DEFAULT:
        default = other.default
    return field(default=default, metadata={"option": spec})


def spec_of(f: dataclasses.Field) -> Option | None:
    return f.metadata.get("option")


def options_of(config) -> list[tuple[dataclasses.Field, Option]]:
    """(field, option) of every command-line option of a config class or instance, in field order."""
    return [(f, spec_of(f)) for f in dataclasses.fields(config) if spec_of(f) is not None]


def flag_of(f: dataclasses.Field) -> str:
    spec = spec_of(f)
    return (spec.flag if spec and spec.flag else "--" + f.name.replace("_", "-"))


def bad(option: str, value, valid: str) -> W2SError:
    """The one error for a bad value: the option, the value and what would be valid."""
    return W2SError(f"{option} {value!r} is invalid: {valid}", option=option)


def check(config) -> None:
    """Every option's choices and range, in field order: the first bad value is a one-line error."""
    for f, spec in options_of(config):
        value = getattr(config, f.name)
        problem = spec.problem(value)
        if problem:
            raise bad(flag_of(f), value, problem)


def defaults(config) -> dict:
    """{field: default} of a config class's fields that have one."""
    return {f.name: f.default for f in dataclasses.fields(config) if f.default is not NO_DEFAULT}


def field_of(config, name: str) -> dataclasses.Field:
    """The field `name` of a config class (to reuse its option with `like`)."""
    return {f.name: f for f in dataclasses.fields(config)}[name]


def ordered(config) -> list[tuple[dataclasses.Field, Option]]:
    """A config class's options in the order --help lists them: the class's own, then each group's
    in the order the class names its groups."""
    by_name = dict((f.name, (f, s)) for f, s in options_of(config))
    order = []
    for owner in [config, *config.__mro__[1:]]:
        for name in owner.__dict__.get("__annotations__", {}):
            if name in by_name and name not in order:
                order.append(name)
    return [by_name[name] for name in order]


def parse_classes(text: str) -> tuple[int, ...]:
    """"0-4" or "0,2,7-9" -> (0, 1, 2, 3, 4) or (0, 2, 7, 8, 9); one line naming the bad part."""
    out = set()
    for part in (p.strip() for p in str(text).split(",")):
        lo, dash, hi = part.partition("-")
        if not (lo.isdigit() and (not dash or hi.isdigit())) or (dash and int(hi) < int(lo)):
            raise bad("--classes", text, f"{part!r} is not a class index or a range a-b (a <= b); e.g. 0-4 or 0,2,7-9")
        out.update(range(int(lo), int(hi if dash else lo) + 1))
    return tuple(sorted(out))
