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
from dataclasses import asdict, dataclass, field

from ..errors import W2SError
from ..pipeline.config.choices import NOISY_SCENARIO, SCENARIOS, check_choice
from ..pipeline.runtime.workspace import workspace_dir
from ..pipeline.sources.noise import LabelNoise
from ..storage.fsutil import write_whole
from .report import few_shot_markdown, markdown_table, misfit_markdown
from .study import run_study
from .study_config import load_study

DEMO_MARKER = "demo.json"
STUDIES = {"standard": "demo", "noisy": "demo-noisy", "few-shot": "demo-few-shot"}


@dataclass(frozen=True)
class DemoConfig:
    out: str  # the demo's own workspace
    scenario: str = "standard"  # choices.SCENARIOS: which shipped study (STUDIES)
    seeds: int | None = None  # [default: the study's, 3]
    quick: bool = False  # the study's quick section: tiny models, a few steps
    label_noise: str | None = None  # the noisy scenario's noise [default: choices.NOISY_SCENARIO]
    overrides: dict = field(default_factory=dict)  # study sections over the shipped file's (the tests' smaller grids)
    progress: bool = True
    fresh: bool = False  # start over even where the same demo was cut short or finished

    def __post_init__(self):
        check_choice("--scenario", self.scenario, SCENARIOS)
        if self.seeds is not None and self.seeds < 1:
            raise W2SError(f"--seeds {self.seeds} is invalid: must be at least 1", option="--seeds")
        if self.label_noise and self.scenario != "noisy":
            raise W2SError("--label-noise is the noisy scenario's: add --scenario noisy", option="--label-noise")
        if self.label_noise:  # checked before an earlier demo's workspace is replaced
            LabelNoise.parse(self.label_noise, 42)

    @classmethod
    def for_scenario(cls, scenario: str, *, out: str | None, seeds: int | None, quick: bool, label_noise: str | None,
                     workspace=None, fresh: bool = False) -> "DemoConfig":
        """The demo of `scenario`, its workspace defaulting to <workspace>/demo[-<scenario>]."""
        out = out or str(workspace_dir(workspace) / ("demo" if scenario == "standard" else f"demo-{scenario}"))
        return cls(out=out, scenario=scenario, seeds=seeds, quick=quick, label_noise=label_noise, fresh=fresh)

    @classmethod
    def quick_demo(cls, out: str, **options) -> "DemoConfig":
        """A smoke-sized demo (the study's quick section): tiny models, a few steps, two seeds."""
        return cls(out=out, quick=True, **options)

    def study(self):
        """The shipped study of this scenario, with this demo's choices over it."""
        overrides = dict(self.overrides)
        if self.seeds is not None:
            overrides["seeds"] = self.seeds
        if self.scenario == "noisy":
            overrides["prepare"] = {"digits": {"label_noise": self.label_noise or NOISY_SCENARIO}}
        return load_study(STUDIES[self.scenario], quick=self.quick, overrides=overrides)


def _prepare_workspace(cfg: DemoConfig, echo=print) -> None:
    """The demo's workspace: kept where the same demo ran there (it resumes), else made afresh."""
    marker = os.path.join(cfg.out, DEMO_MARKER)
    same = {k: v for k, v in asdict(cfg).items() if k not in ("fresh", "progress")}
    if os.path.exists(cfg.out) and os.listdir(cfg.out):
        # Only a directory this command made (it carries the marker) is ever deleted.
        if not os.path.exists(marker):
            raise W2SError(f"{cfg.out} exists and is not a demo workspace; choose another --out")
        try:
            before = {k: v for k, v in json.load(open(marker)).items() if k not in ("fresh", "progress")}
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
    study = cfg.study()  # a bad study or option is said before an earlier demo is replaced
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
