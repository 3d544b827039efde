"""What a study's step does, one class per kind: the stage config it builds, how it runs (in this
process or a worker's), and what its marker's result says on the progress line. A new kind is one
class here and one line in KINDS (and the plan that makes its steps: study.py).

    prepare   the study's own data (digits, fashion-mnist)
    label     a weak model's store (or a feature store)
    train     a weak model, a ceiling, a grid run or a probe; resumed from its last.pt
    eval      a trained model on a split (select:'s choose_on and score_on)
    fewshot   a trained model's few-shot episodes
"""

from __future__ import annotations

import os
import shutil
from dataclasses import asdict

from ..errors import W2SError
from ..pipeline.sources.shards import read_manifest
from .eval_config import EvalConfig
from .evaluate import run_eval
from .label import run_label
from .label_config import LabelConfig
from .prepare import run_prepare
from .prepare_config import PrepareCifarConfig
from .study_config import PREPARES
from .train import run_train
from .train_config import TrainConfig


class StepKind:
    """A kind of study step. `step` is study.Step (kind, name, options, meta, ...); `ws` the workspace."""

    name = ""

    def config(self, step, ws: str):
        raise NotImplementedError

    def run(self, step, ws: str) -> dict:
        """Run the step; its result, for the marker."""
        raise NotImplementedError

    def said(self, result: dict) -> str:
        """The progress line's words for a finished step's result."""
        raise NotImplementedError


class Prepare(StepKind):
    name = "prepare"

    def config(self, step, ws):
        kind = step.meta.get("prepares", "digits")
        named = {"name": kind} if PREPARES[kind] is PrepareCifarConfig else {}  # cifar10 or cifar100
        return PREPARES[kind](**step.options, **named, workspace=ws)

    def run(self, step, ws):
        out = run_prepare(self.config(step, ws)).out
        return {"out": out, "label_noise": read_manifest(out).get("label_noise")}

    def said(self, result):
        noise = result.get("label_noise")
        return "prepared" + (f"; noisy labels: {noise['kind']} {noise['rate']} (seed {noise['seed']}) on the "
                             f"{' and '.join(noise['splits'])} splits, {noise['flip_rate']:.1%} flipped; the other "
                             "splits stay clean, so every top-1 is against clean labels" if noise else "")


class Label(StepKind):
    name = "label"

    def config(self, step, ws):
        return LabelConfig(**step.options, progress=False, workspace=ws)

    def run(self, step, ws):
        label = run_label(self.config(step, ws))
        return {"store": label.store, "samples": label.samples_total, "complete": label.complete}

    def said(self, result):
        return f"labelled {result['samples']} samples"


class Train(StepKind):
    name = "train"

    def config(self, step, ws):
        return TrainConfig(**step.options, progress=False, workspace=ws)

    def run(self, step, ws):
        """Started, or resumed from its last.pt where a killed study left one (a run killed before
        its first checkpoint starts again)."""
        run_dir = step.options["run"]
        resume = os.path.exists(os.path.join(run_dir, "last.pt"))
        if not resume and os.path.isdir(run_dir):
            shutil.rmtree(run_dir)
        cfg = self.config(step, ws)
        if resume:
            cfg = TrainConfig(**{**asdict(cfg), "resume": True})
        result = run_train(cfg)
        if not result.finished:
            raise W2SError(f"run {run_dir} stopped at step {result.step} before its end")
        return {"run_dir": run_dir, "top1": result.val_top1, "best_top1": result.best_top1, "resumed": resume}

    def said(self, result):
        resumed = " (resumed)" if result.get("resumed") else ""
        if result["top1"] is None:  # a run with no_eval (a pretext backbone's): nothing to score
            return "trained, not evaluated (no_eval)" + resumed
        return f"top-1 {result['top1']:.4f}" + resumed


class Eval(StepKind):
    name = "eval"

    def config(self, step, ws):
        return EvalConfig(**step.options, workspace=ws)

    def run(self, step, ws):
        figures = run_eval(self.config(step, ws))
        return {"split": figures["split"], "samples": figures["samples"], "top1": figures["top1"]}

    def said(self, result):
        return f"top-1 {result['top1']:.4f} on {result['split']}"


class FewShot(Eval):
    name = "fewshot"

    def run(self, step, ws):
        figures = run_eval(self.config(step, ws))
        return {"split": figures["split"], "samples": figures["samples"], "few_shot": figures["few_shot"]}

    def said(self, result):
        return ", ".join(f"{k}-shot {f['accuracy']:.4f}" for k, f in result["few_shot"].items())


KINDS: dict[str, StepKind] = {kind.name: kind for kind in (Prepare(), Label(), Train(), Eval(), FewShot())}
