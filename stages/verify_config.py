"""`verify`'s options as one validated config (read by --help without torch)."""

from __future__ import annotations

from dataclasses import dataclass

from ..pipeline.config import options
from ..pipeline.config.options import option


@dataclass(frozen=True)
class VerifyConfig:  # not keyword-only: `VerifyConfig(store)` reads as the command does
    store: str = option(help="The store to check (path or URL).", argument=True)
    recompute: int = option(0, "Re-run the weak model (recorded checkpoint and preprocessing) on this many random "
                               "samples and compare.", at_least=0)
    check_data: bool = option(True, "Skip reading the shards (the one-row-per-sample check).", flag="--no-data",
                              negate=True)
    seed: int = option(0, "Seed choosing the --recompute samples.")
    device: str = option("auto", "Device for --recompute: auto, cpu, cuda or cuda:N.")

    def __post_init__(self):
        options.check(self)
