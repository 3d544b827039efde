"""`report`'s options as one validated config (read by --help without torch)."""

from __future__ import annotations

from dataclasses import dataclass

from ..pipeline.config import options
from ..pipeline.config.choices import REPORT_FORMATS
from ..pipeline.config.options import option


@dataclass(frozen=True, kw_only=True)
class ReportConfig:
    workspace: str | None = option(None, "The workspace to report [default: the current one].", argument=True,
                                   path="dir")
    out: str | None = option(None, "Where report.md, report.json and the PNGs go [default: <workspace>/report].",
                             path="dir")
    format: str = option("md", "What to print: the Markdown table, or the whole report as JSON for scripts.",
                         choices=REPORT_FORMATS)
    plots: bool = option(True, "Skip the figures.", flag="--no-plots", negate=True)
    reference: str | None = option(None, "The loss every weak-to-strong row is paired against, seed by seed on the "
                                         "same store(s): the mean difference with its 95% interval, a verdict only "
                                         "where it excludes 0, and the seeds that would show a difference not yet "
                                         "shown [default: hard].", metavar="LOSS")
    per_class: bool = option(False, "Per-class top-1 of each row, from the runs' kept predictions.")
    pair: tuple[str, ...] | None = option(None, "Two runs of the same seed and store(s) compared sample by sample on "
                                                "their kept predictions (McNemar's exact test, and their agreement).",
                                          metavar="RUN_A RUN_B", nargs=2)
    split: str | None = option(None, "Whose kept predictions --per-class and --pair read: the validation split a run "
                                     "kept at its end, or one `eval --run RUN --split NAME` scored [default: a run's "
                                     "only ones].", metavar="NAME")

    def __post_init__(self):
        options.check(self)
        if self.pair is not None and len(self.pair) != 2:
            raise options.bad("--pair", " ".join(self.pair), "give two runs: --pair RUN_A RUN_B")
