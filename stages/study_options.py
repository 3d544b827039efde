"""`study`'s command-line options as one validated config (read by --help without torch); the
study file itself is study_config.py's."""

from __future__ import annotations

from dataclasses import dataclass

from ..pipeline.config import options
from ..pipeline.config.choices import CLUSTERS
from ..pipeline.config.options import option


@dataclass(frozen=True, kw_only=True)
class StudyOptions:
    study: str = option(help="A shipped study's name (`w2s-pipe studies`) or a YAML file.", argument=True)
    out: str | None = option(None, "The study's workspace [default: <workspace>/studies/<name>]; run again, it skips "
                                   "what is done there and resumes what was cut short.", path="dir")
    jobs: int = option(1, "Steps run side by side, each in its own process, the cores shared between them.", at_least=1)
    cluster: str | None = option(None, "Each step a job through submitit: slurm, with the study's cluster: parameters "
                                       "(partition, time, GPUs); local, submitit's local executor (processes on this "
                                       "machine).", choices=CLUSTERS)
    dry_run: bool = option(False, "Say what would run and what is done already; run nothing.")
    quick: bool = option(False, "The study's quick: section over it: a smoke-sized version.")
    plots: bool = option(True, "Skip the figures.", flag="--no-plots", negate=True)
    workspace: str | None = None

    def __post_init__(self):
        options.check(self)
