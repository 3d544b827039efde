"""`w2s-pipe demo`: the whole weak-to-strong study on digits, on a laptop CPU, in about eight minutes on two cores.

For each seed: train the weak model on the `weak` split's ground truth; label the `transfer` split
with it (a real store); train the strong model on `transfer`'s ground truth (the ceiling); train the
strong model from the store with each loss, without ground truth (weak-to-strong) and with
`--gt-weight 1` (the paper's distillation setting), and with hard labels from the 70% of the store
its weak model is surest of (`--keep-frac 0.7 --rank-by margin --per-class`: the choice that
bench/selection_study.py found to help here); then `report`. The training options every run
shares are the `demo` recipe (pipeline/train/recipes/demo.yaml), fixed before looking at any result
and the same for every loss: no tuning on `val`.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field

from ..errors import W2SError
from ..pipeline.config.choices import NOISY_SCENARIO, SCENARIOS, check_choice
from ..pipeline.runtime.workspace import workspace_dir
from ..pipeline.sources.noise import LabelNoise
from ..pipeline.sources.shards import read_manifest
from ..pipeline.train.recipes import load_recipe
from .evaluate import EvalConfig, run_eval
from .label import LabelConfig, run_label
from .prepare import prepare_digits
from .report import ReportConfig, few_shot_markdown, markdown_table, run_report
from .train import TrainConfig, run_train
from .train_config import recipe_options

DEMO_MARKER = "demo.json"


@dataclass(frozen=True)
class DemoConfig:
    out: str  # the demo's own workspace
    seeds: int = 3
    weak: str = "test_vit"  # timm's 0.3M-parameter ViT: weak on digits
    weak_img_size: int = 32
    weak_epochs: int = 10
    strong: str = "resnet10t"  # 4.9M-parameter ResNet
    strong_img_size: int = 24
    strong_epochs: int = 8
    steps_per_epoch: int | None = None
    losses: tuple[str, ...] = ("hard", "kd", "augconf", "adaptconf")
    keep_frac: float | None = 0.7  # the selection row: hard labels of the most trusted fraction (None: no row)
    label_noise: str | None = None  # the noisy-label scenario: prepare digits --label-noise (val stays clean)
    noise_seed: int = 42
    few_shot: bool = False  # the few-shot scenario: digits-fewshot, every model also evaluated on novel classes
    episodes: int = 600  # few-shot episodes per model (5-way, 1 and 5 shots, 15 queries; seed 0 for all)
    recipe: str = "demo"  # the train options every run shares (pipeline/train/recipes/demo.yaml)
    train_overrides: dict = field(default_factory=dict)  # over the recipe (the quick demo's smaller batches)
    progress: bool = True

    def __post_init__(self):
        if self.seeds < 1:
            raise W2SError(f"--seeds {self.seeds} is invalid: must be at least 1", option="--seeds")
        if self.label_noise:  # checked before an earlier demo's workspace is replaced
            LabelNoise.parse(self.label_noise, self.noise_seed)

    @classmethod
    def for_scenario(cls, scenario: str, *, out: str | None, seeds: int, quick: bool, label_noise: str | None,
                     workspace=None) -> "DemoConfig":
        """The demo of `scenario` (choices.SCENARIOS): standard, the paper's weak-to-strong setting;
        noisy, its noisy-label one (--label-noise, default choices.NOISY_SCENARIO); few-shot, trained
        on digits 0-4 and evaluated on 5-9. Its workspace defaults to <workspace>/demo[-<scenario>]."""
        check_choice("--scenario", scenario, SCENARIOS)
        if label_noise and scenario != "noisy":
            raise W2SError("--label-noise is the noisy scenario's: add --scenario noisy", option="--label-noise")
        out = out or str(workspace_dir(workspace) / ("demo" if scenario == "standard" else f"demo-{scenario}"))
        chosen = {"label_noise": (label_noise or NOISY_SCENARIO) if scenario == "noisy" else None,
                  "few_shot": scenario == "few-shot", "seeds": seeds}
        return cls.quick(out, **chosen) if quick else cls(out=out, **chosen)

    @classmethod
    def quick(cls, out: str, **overrides) -> "DemoConfig":
        """A smoke-sized demo: tiny models, a few steps, two seeds."""
        base = dict(seeds=2, strong="test_resnet", strong_img_size=32, weak_epochs=1, strong_epochs=1,
                    steps_per_epoch=3, train_overrides={"batch_size": 32})
        return cls(out=out, **{**base, **overrides})


def _prepare_workspace(cfg: DemoConfig) -> None:
    if os.path.exists(cfg.out) and os.listdir(cfg.out):
        # Only a directory this command made (it carries the marker) is ever deleted.
        if not os.path.exists(os.path.join(cfg.out, DEMO_MARKER)):
            raise W2SError(f"{cfg.out} exists and is not a demo workspace; choose another --out")
        shutil.rmtree(cfg.out)
    os.makedirs(cfg.out, exist_ok=True)
    with open(os.path.join(cfg.out, DEMO_MARKER), "w") as f:
        json.dump({k: v for k, v in asdict(cfg).items()}, f, indent=1)


def run_demo(cfg: DemoConfig, echo=print) -> "DemoResult":
    _prepare_workspace(cfg)
    ws = cfg.out
    started = time.perf_counter()

    noise = LabelNoise.parse(cfg.label_noise, cfg.noise_seed) if cfg.label_noise else None
    data = "digits-fewshot" if cfg.few_shot else "digits"
    prepared = prepare_digits(os.path.join(ws, "data", data), noise=noise, few_shot=cfg.few_shot)
    if noise is not None:
        record = read_manifest(prepared.out)["label_noise"]
        echo(f"noisy labels: {noise.kind} {noise.rate} (seed {noise.seed}) on the weak and transfer splits, "
             f"{record['flip_rate']:.1%} flipped; val stays clean, so every top-1 is against clean labels")
    plan = 3 + 2 * len(cfg.losses) + (1 if cfg.keep_frac else 0)
    total, done = plan * cfg.seeds, 0

    recipe = load_recipe(cfg.recipe, recipe_options())
    common = {**recipe, **cfg.train_overrides, "steps_per_epoch": cfg.steps_per_epoch, "config": cfg.recipe,
              "workspace": ws, "progress": cfg.progress}  # a bar per run: a step is never silent

    def train(run, **options):
        nonlocal done
        t = time.perf_counter()
        result = run_train(TrainConfig(run=run, **{**common, **options}))
        done += 1
        echo(f"[{done}/{total}] {run}: top-1 {result.val_top1:.4f} ({time.perf_counter() - t:.0f} s)")
        return result

    with _data_in(ws):  # the prepared data lives in this workspace, whatever W2S_DATA says
        for seed in range(cfg.seeds):
            weak = train(f"s{seed}-weak", strong=cfg.weak, img_size=cfg.weak_img_size, epochs=cfg.weak_epochs,
                         loss="gt", data=data, split="weak", seed=seed)
            store = os.path.join(ws, "stores", f"digits-transfer-{cfg.weak}-s{seed}")
            t = time.perf_counter()
            run_label(LabelConfig(weak=None, weak_checkpoint=os.path.join(weak.run_dir, "last.pt"), data=data,
                                  labels=store, workers=0, precision="fp32", workspace=ws, progress=False))
            done += 1
            echo(f"[{done}/{total}] s{seed}: labelled the transfer split ({time.perf_counter() - t:.0f} s)")
            strong = dict(strong=cfg.strong, img_size=cfg.strong_img_size, epochs=cfg.strong_epochs, seed=seed)
            train(f"s{seed}-ceiling", loss="gt", data=data, split="transfer", **strong)
            for gt_weight in (0.0, 1.0):
                for loss in cfg.losses:
                    suffix = "-gt" if gt_weight else ""
                    train(f"s{seed}-{loss}{suffix}", loss=loss, labels=store, gt_weight=gt_weight, **strong)
            if cfg.keep_frac:
                train(f"s{seed}-hard-keep{cfg.keep_frac}", loss="hard", labels=store, keep_frac=cfg.keep_frac,
                      rank_by="margin", per_class=True, **strong)
        if cfg.few_shot:
            few_shot_evals(ws, cfg.episodes, echo)
    report = DemoResult(run_report(ReportConfig(workspace=ws)))
    report["seconds"] = time.perf_counter() - started
    return report


class DemoResult(dict):
    """The demo's report (`report`'s), with the demo's summary: the table, then where it is."""

    def summary(self) -> list[str]:
        lines = ["", markdown_table(self)]
        for table in self["few_shot"]:
            lines += ["", few_shot_markdown(table)]
        return [*lines, "", f"demo finished in {self['seconds'] / 60:.1f} min; report {self['markdown']}"]


def few_shot_evals(ws: str, episodes: int, echo=print) -> None:
    """Every finished run's 5-way 1- and 5-shot accuracy on digits-fewshot's novel classes (the same
    seeded episodes for all), recorded in the run as `eval --run RUN --split novel --episodes N`
    records it, for `report`'s few-shot table."""
    for run in sorted(os.listdir(os.path.join(ws, "runs"))):
        if os.path.exists(os.path.join(ws, "runs", run, "last.pt")):
            r = run_eval(EvalConfig(run=os.path.join(ws, "runs", run), split="novel", episodes=episodes, device="cpu",
                                    workers=0, workspace=ws))
            echo(f"few-shot {run}: " + ", ".join(f"{k}-shot {f['accuracy']:.4f}" for k, f in r["few_shot"].items()))


@contextmanager
def _data_in(ws: str):
    """W2S_DATA set to the workspace's data for the block, then as it was."""
    old = os.environ.get("W2S_DATA")
    os.environ["W2S_DATA"] = os.path.join(ws, "data")
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("W2S_DATA", None)
        else:
            os.environ["W2S_DATA"] = old
