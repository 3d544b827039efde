"""`w2s-pipe demo`: the whole weak-to-strong study on digits, on a laptop CPU, in about eight minutes
on two cores: the shipped study `demo` (stages/studies/demo.yaml: what it runs and why), or one of
the paper's other scenarios (`demo-noisy`: noisy ground truth; `demo-few-shot`: novel classes), in
the demo's own workspace; then its report. Run again with the same options, a demo continues where it
was cut short (its steps are a study's: each done step is kept), and a finished one prints its report
again; other options, or `fresh`, start it over.
"""

from __future__ import annotations

import json
import os
import shutil
from dataclasses import asdict

from ..errors import W2SError
from ..storage.fsutil import write_whole
from .demo_config import NOT_THE_DEMOS, STUDIES, DemoConfig
from .report import few_shot_markdown, markdown_table, misfit_markdown
from .study import run_study
from .study_config import load_study

DEMO_MARKER = "demo.json"


def demo_study(cfg: DemoConfig):
    """The shipped study of the demo's scenario, with the demo's choices over it."""
    return load_study(STUDIES[cfg.scenario], quick=cfg.quick, overrides=cfg.study_overrides())


def _prepare_workspace(cfg: DemoConfig, echo=print) -> None:
    """The demo's workspace: kept where the same demo ran there (it resumes), else made afresh."""
    marker = os.path.join(cfg.out, DEMO_MARKER)
    same = {k: v for k, v in asdict(cfg).items() if k not in NOT_THE_DEMOS}
    if os.path.exists(cfg.out) and os.listdir(cfg.out):
        # Only a directory this command made (it carries the marker) is ever deleted.
        if not os.path.exists(marker):
            raise W2SError(f"{cfg.out} exists and is not a demo workspace; choose another --out")
        try:
            before = {k: v for k, v in json.load(open(marker)).items() if k not in NOT_THE_DEMOS}
        except (OSError, ValueError):
            before = None
        if before == same and not cfg.fresh:
            echo(f"continuing the demo in {cfg.out} (its finished steps are kept; --fresh starts over)")
            return
        echo(f"starting the demo over in {cfg.out}" + ("" if cfg.fresh else " (an earlier demo there had other options)"))
        shutil.rmtree(cfg.out)
    os.makedirs(cfg.out, exist_ok=True)
    write_whole(marker, json.dumps(same, indent=1))


def run_demo(cfg: DemoConfig, echo=print) -> "DemoResult":
    study = demo_study(cfg)  # a bad study or option is said before an earlier demo is replaced
    _prepare_workspace(cfg, echo)
    result = run_study(study, out=cfg.out, echo=echo)
    report = DemoResult(result["report"], seconds=result["time"]["wall_s"], failed=result["failed"])
    if result["failed"]:
        name, why = result["failed"][0]
        raise W2SError(f"the demo's step {name} {why}; its other steps are kept in {cfg.out}")
    return report


class DemoResult(dict):
    """The demo's report (`report`'s), with the demo's summary: the table, then where it is."""

    def summary(self) -> list[str]:
        lines = ["", markdown_table(self)]
        if misfit_markdown(self):
            lines += ["", misfit_markdown(self)]
        for table in self["few_shot"]:
            lines += ["", few_shot_markdown(table)]
        return [*lines, "", f"demo finished in {self['seconds'] / 60:.1f} min; report {self['markdown']}"]
