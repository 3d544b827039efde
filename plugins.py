"""Finding a class a user names: `package.module:Name`, or a name a package registers under an
entry-point group (`w2s_pipe.losses`, `w2s_pipe.ensembles`). Shared by the losses' and the
ensembles' registries; imports nothing heavy."""

from __future__ import annotations

import importlib
import importlib.metadata
from dataclasses import dataclass

from .errors import W2SError


@dataclass(frozen=True)
class Plugins:
    """Classes of `base` found by `option`'s value: built-ins first (the registry's), then a
    `package.module:Name`, then the entry points of `group`; anything else a one-line error naming the
    option, the value and what it accepts."""

    option: str  # --loss, --ensemble
    group: str  # the entry-point group
    base: type
    built_in: tuple[str, ...]  # the names the registry holds itself, listed first

    def names(self) -> tuple[str, ...]:
        """The built-in names and the installed plug-ins', in --help's order."""
        return (*self.built_in, *(ep.name for ep in self.entry_points() if ep.name not in self.built_in))

    def entry_points(self):
        return importlib.metadata.entry_points(group=self.group)

    def find(self, name: str) -> type:
        """The class `name` names (not a built-in: the registry looks there first)."""
        if ":" in str(name):
            module, _, attr = str(name).partition(":")
            try:
                found = getattr(importlib.import_module(module), attr)
            except ImportError as exc:
                raise self.invalid(name, f"cannot import {module} ({exc})") from None
            except AttributeError:
                raise self.invalid(name, f"{module} has no {attr}") from None
        else:
            points = [ep for ep in self.entry_points() if ep.name == name]
            if not points:
                raise self.invalid(name, f"no such {self.option.lstrip('-')}")
            try:
                found = points[0].load()
            except ImportError as exc:
                raise self.invalid(name, f"its entry point {points[0].value} cannot be imported ({exc})") from None
        if not (isinstance(found, type) and issubclass(found, self.base)):
            raise self.invalid(name, f"not a subclass of {self.base.__module__}.{self.base.__name__}")
        return found

    def invalid(self, name, why: str) -> W2SError:
        return W2SError(f"{self.option} {name!r} is invalid: {why}; choose one of {', '.join(self.names())}, or name "
                        "a class as package.module:Name", option=self.option)
