"""`inspect`'s options as one validated config (read by --help without torch)."""

from __future__ import annotations

from dataclasses import dataclass

from ..pipeline.config import options
from ..pipeline.config.choices import INSPECT_FORMATS
from ..pipeline.config.options import option


@dataclass(frozen=True, kw_only=True)
class InspectConfig:
    stores: tuple[str, ...] = option(help="One store, or several of the same shards (an ensemble's members).",
                                     argument=True, nargs=-1)
    out: str | None = option(None, "Where the figures go [default: <workspace>/inspect/<store>].", path="dir")
    format: str = option("text", "Output format.", choices=INSPECT_FORMATS)
    plots: bool = option(True, "Skip the figures.", flag="--no-plots", negate=True)
    workspace: str | None = None

    def __post_init__(self):
        options.check(self)

    @property
    def store(self) -> str:
        """The stores as one comma-separated list (storage.pick_store's)."""
        return ",".join(self.stores)
