"""`demo`'s options as one validated config (read by --help without torch)."""

from __future__ import annotations

from dataclasses import dataclass, field

from ..errors import W2SError
from ..pipeline.config import options
from ..pipeline.config.choices import NOISY_SCENARIO, SCENARIOS
from ..pipeline.config.options import option
from ..pipeline.runtime.workspace import workspace_dir

STUDIES = {"standard": "demo", "noisy": "demo-noisy", "few-shot": "demo-few-shot"}
NOT_THE_DEMOS = ("fresh", "progress", "workspace")  # options that do not make another demo (its marker's)


@dataclass(frozen=True, kw_only=True)
class DemoConfig:
    out: str | None = option(None, "The demo's own workspace [default: <workspace>/demo]. The same demo there "
                                   "continues where it was cut short, or prints its report again; one with other "
                                   "options is replaced.", path="dir")
    fresh: bool = option(False, "Start the demo over: its workspace's earlier runs are deleted.")
    seeds: int | None = option(None, "Seeds per configuration [default: the study's, 3]; tables show mean ± std.",
                               at_least=1)
    quick: bool = option(False, "A smoke-sized version (tiny models, a few steps): 21 s on a 2-core CPU; its accuracies "
                                "are those of barely trained models, so PGR is often undefined there (the report says "
                                "why).")
    scenario: str = option("standard", "standard: the paper's weak-to-strong setting; noisy: its noisy-label one, the "
                                       "weak and transfer splits' labels corrupted once (symmetric 0.2, seed 42: the weak "
                                       "model, the ceiling and the +gt runs learn from noisy labels; val stays clean); "
                                       "few-shot: trained on digits 0-4 (digits-fewshot), every model also evaluated "
                                       "5-way 1- and 5-shot on digits 5-9, never trained on (600 episodes, the same for "
                                       "all) [default workspace: <workspace>/demo-<scenario>].", choices=SCENARIOS)
    label_noise: str | None = option(None, "--scenario noisy: the noise, symmetric:R or asymmetric:R (digits' map: "
                                           "1↔7, 3↔8, 4↔9), seed 42 [default: symmetric:0.2].")
    overrides: dict = field(default_factory=dict)  # study sections over the shipped file's (the tests' smaller grids)
    progress: bool = True
    workspace: str | None = None

    def __post_init__(self):
        options.check(self)
        if self.label_noise and self.scenario != "noisy":
            raise W2SError("--label-noise is the noisy scenario's: add --scenario noisy", option="--label-noise")
        if self.label_noise:  # checked before an earlier demo's workspace is replaced
            from ..pipeline.sources.noise import LabelNoise  # lazy: numpy and the shards, which --help does not need

            LabelNoise.parse(self.label_noise, 42)
        if self.out is None:  # <workspace>/demo[-<scenario>]
            suffix = "" if self.scenario == "standard" else f"-{self.scenario}"
            object.__setattr__(self, "out", str(workspace_dir(self.workspace) / f"demo{suffix}"))

    @classmethod
    def quick_demo(cls, out: str, **options) -> "DemoConfig":
        """A smoke-sized demo (the study's quick section): tiny models, a few steps, two seeds."""
        return cls(out=out, quick=True, **options)

    def study_overrides(self) -> dict:
        """This demo's choices over its shipped study (STUDIES[scenario])."""
        overrides = dict(self.overrides)
        if self.seeds is not None:
            overrides["seeds"] = self.seeds
        if self.scenario == "noisy":
            overrides["prepare"] = {"digits": {"label_noise": self.label_noise or NOISY_SCENARIO}}
        return overrides
