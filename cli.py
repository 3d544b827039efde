"""The `w2s-pipe` command line: options -> a stage's config -> the stage -> the result's summary.

Each command's options are made from its config's fields (pipeline/config/options.py: one
definition of each option's default, range, choices and help), so this file only parses. Heavy
imports (torch, timm, zarr) happen inside the commands, so `--help` answers at once.
"""

from __future__ import annotations

import dataclasses
import json
import os

import click

from . import __version__
from .errors import W2SError
from .pipeline.config.options import NO_DEFAULT, field_of, flag_of, ordered, spec_of
from .stages.demo_config import DemoConfig
from .stages.eval_config import EvalConfig
from .stages.features_config import FeaturesConfig
from .stages.inspect_config import InspectConfig
from .stages.label_config import LabelConfig
from .stages.prepare_config import (
    PrepareCifarConfig,
    PrepareDigitsConfig,
    PrepareFashionConfig,
    PrepareFolderConfig,
    PrepareHfConfig,
)
from .stages.report_config import ReportConfig
from .stages.study_options import StudyOptions
from .stages.train_config import TrainConfig
from .stages.verify_config import VerifyConfig


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except W2SError as exc:
            raise click.ClickException(str(exc)) from None
        except OSError as exc:  # a full disk where no stage names the file: still one line, never a traceback
            from .storage.fsutil import DISK_FULL, disk_full

            if exc.errno not in DISK_FULL:
                raise
            if exc.filename:
                raise click.ClickException(str(disk_full(exc.filename, "the file"))) from None
            raise click.ClickException("no space left on device (the system did not say where); free space and run "
                                       "the same command again: what was finished is kept") from None
        except KeyboardInterrupt:
            # 128 + SIGINT, as a shell reports it; what was finished is kept (see docs/guide.md, Reliability).
            click.echo("\ninterrupted", err=True)
            ctx.exit(130)


class _Numbers(click.ParamType):
    """A comma-separated list (--shots 1,5; --noise-splits train,weak) as a tuple of `kind`."""

    def __init__(self, kind):
        self.kind, self.name = kind, f"{kind.__name__},..."

    def convert(self, value, param, ctx):
        if isinstance(value, tuple):
            return value
        try:
            return tuple(self.kind(v.strip()) for v in str(value).split(",") if v.strip())
        except ValueError:
            self.fail(f"{value!r}: give {self.kind.__name__}s, comma-separated (1,5)", param, ctx)


TYPES = {"int": click.INT, "float": click.FLOAT, "str": click.STRING, "tuple[int, ...]": _Numbers(int),
         "tuple[str, ...]": _Numbers(str)}
PATHS = {"dir": dict(file_okay=False), "file": dict(dir_okay=False), "dir!": dict(file_okay=False, exists=True),
         "file!": dict(dir_okay=False, exists=True)}


def options_from(config, skip: tuple[str, ...] = ()):
    """Decorate a command with the options (and arguments) of `config`'s fields, in its --help order."""
    def decorate(command):
        for f, spec in reversed(ordered(config)):
            if f.name not in skip:
                command = _param(f, spec)(command)
        return command
    return decorate


def _param(f: dataclasses.Field, spec):
    kinds = [k.strip() for k in str(f.type).split("|")]
    kind = next((k for k in kinds if k != "None"), "str")
    required, default = f.default is NO_DEFAULT, (None if f.default is NO_DEFAULT else f.default)
    if kind == "bool":
        if spec.negate:
            return click.option(flag_of(f), f.name, is_flag=True, flag_value=False, default=True, help=spec.help)
        if spec.secondary:  # --x/--no-x, where None (neither given) is a third state
            return click.option(f"{flag_of(f)}/{spec.secondary}", f.name, default=default, help=spec.help)
        return click.option(flag_of(f), f.name, is_flag=True, default=default, help=spec.help)
    kind_type = click.Choice(spec.choices) if spec.choices and not spec.open_choices else TYPES.get(kind, click.STRING)
    if spec.path:
        kind_type = click.Path(**PATHS[spec.path])
    if spec.argument:
        if spec.nargs:  # several values, each its own word (inspect STORE STORE)
            return click.argument(f.name, nargs=spec.nargs, required=required)
        return click.argument(f.name, type=kind_type, required=required, **({} if required else {"default": default}))
    if spec.nargs:  # an option of several words (report --pair RUN_A RUN_B)
        return click.option(flag_of(f), f.name, nargs=spec.nargs, default=default, metavar=spec.metavar, help=spec.help)
    shown = ",".join(map(str, default)) if isinstance(default, tuple) else default
    return click.option(flag_of(f), *spec.aliases, f.name, type=kind_type, default=shown, required=required,
                        show_default=default is not None, metavar=spec.metavar, help=spec.help)


def _config(ctx, kind, values: dict):
    """A config of `kind` built from the command's values (and the workspace, where it takes one);
    a bad value a recipe gave says so (train --config)."""
    try:
        given = "workspace" in _fields(kind) and values.get("workspace") is None  # the global --workspace
        return kind(**{**values, **({"workspace": ctx.obj["workspace"]} if given else {})})
    except W2SError as exc:
        raise _from_recipe(ctx, exc) from None


def _fields(config) -> set[str]:
    return {f.name for f in dataclasses.fields(config)}


def _echo(result) -> None:
    """The stage's summary, printed by the main process alone (under torchrun every rank returns;
    torchrun's RANK, read here as runtime.distributed reads it, without importing torch)."""
    if int(os.environ.get("RANK", 0)) == 0:
        for line in result.summary():
            click.echo(line)


@click.group(cls=_Group, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.option("--workspace", envvar="W2S_HOME", type=click.Path(file_okay=False), default=None,
              help="Directory for prepared data, stores and runs [env W2S_HOME; default ./w2s-work].")
@click.version_option(__version__, prog_name="w2s-pipe")
@click.pass_context
def cli(ctx, workspace):
    """Weak-to-strong generalization for vision: label once with a weak timm model, then train
    many strong models from the cached labels.

    \b
      w2s-pipe prepare digits                       # embedded data set -> WebDataset shards
      w2s-pipe label --weak resnet18 --data imagenet  # weak logits -> a reusable label store
      w2s-pipe train --strong vit_b16                # strong model from shards + store
    """
    ctx.obj = {"workspace": workspace}


@cli.group(cls=_Group)
def prepare():
    """Turn a data set into WebDataset shards with a manifest."""


@prepare.command("digits")
@options_from(PrepareDigitsConfig)
@click.pass_context
def prepare_digits_cmd(ctx, **values):
    """scikit-learn's handwritten digits (1797 real 8x8 images, shipped with the package) as PNG
    shards, split with a fixed seed into weak (600: the weak model's ground truth), transfer
    (897: what the weak model labels and the strong model learns from) and val (300), whose two
    fixed halves are also written as select (150: where a study chooses a hyperparameter) and
    test (150: where it scores)."""
    from .stages.prepare import run_prepare

    _echo(run_prepare(_config(ctx, PrepareDigitsConfig, values)))


def _prepare_cifar_command(name: str, classes: int, archive: str):
    @prepare.command(name, help=f"{name.upper()} ({classes} classes) from the python archive ARCHIVE ({archive}, as "
                                "downloaded) as PNG shards with a manifest: `train` is the labelling split, `test` the "
                                "validation split. The pickles are read without running code from them.")
    @options_from(PrepareCifarConfig)
    @click.pass_context
    def command(ctx, **values):
        from .stages.prepare import run_prepare

        _echo(run_prepare(_config(ctx, PrepareCifarConfig, {**values, "name": name})))
    return command


for _name, _classes, _archive in (("cifar10", 10, "cifar-10-python.tar.gz"), ("cifar100", 100, "cifar-100-python.tar.gz")):
    _prepare_cifar_command(_name, _classes, _archive)


@prepare.command("fashion-mnist")
@options_from(PrepareFashionConfig)
@click.pass_context
def prepare_fashion_cmd(ctx, **values):
    """Zalando's Fashion-MNIST (70,000 28x28 grey images of 10 kinds of clothing) from its four IDX
    files in SRC (gzipped or not; default: Debian's dataset-fashion-mnist) as PNG shards, each file
    checked (magic number, size, counts, labels 0-9) and its sha256 in the manifest: weak (10,000:
    the weak models' ground truth), transfer (45,000: what the weak model labels and the students
    learn from) and select (5,000: where hyperparameters are chosen, and what training validates
    on), fixed parts of the training images, test, the official 10,000, only ever scored, and
    rotation (transfer's images turned by 0-3 quarter turns and labelled by the turn, never the
    class: a self-supervised backbone's pretext task)."""
    from .stages.prepare import run_prepare

    _echo(run_prepare(_config(ctx, PrepareFashionConfig, values)))


@prepare.command("folder")
@options_from(PrepareFolderConfig)
@click.pass_context
def prepare_folder_cmd(ctx, **values):
    """An ImageFolder-style directory SRC (one sub-folder per class; classes numbered in sorted
    order) as shuffled shards `<prefix>-<split>-NNNNNN.tar` with a manifest. A SRC holding a
    `train/` folder of class folders is the ImageNet layout (`train/` and `val/`, one folder per
    class in each): every split folder in it is written in one call (--split is then unused), with
    one class numbering."""
    from .stages.prepare import run_prepare

    _echo(run_prepare(_config(ctx, PrepareFolderConfig, values)))


@prepare.command("hf")
@options_from(PrepareHfConfig)
@click.pass_context
def prepare_hf_cmd(ctx, **values):
    """A Hugging Face data set saved to disk, DIR (`save_to_disk`'s Arrow files, or Parquet files
    as the Hub holds them, with image bytes), as shards `<prefix>-<split>-NNNNNN.tar` with a
    manifest; read with pyarrow a record batch at a time, never whole; its ClassLabel's names are
    the classes."""
    from .stages.prepare import run_prepare

    _echo(run_prepare(_config(ctx, PrepareHfConfig, values)))


@cli.command()
@options_from(LabelConfig)
@click.pass_context
def label(ctx, **values):
    """Stage one: run a weak model over a data set's shards once and store its logits and
    confidences (Zarr arrays + index.parquet) for every later `train` run.

    Re-running the same command finishes an interrupted store and redoes nothing; on a finished
    store it checks the store against what was written and writes nothing. Under `torchrun
    --nproc-per-node N`, rank r labels shards r, r+N, ... Several `label` processes started on one
    local store (at once, or while one runs) share it: one creates it while the others wait, and
    each shard is claimed by one process; a claim of a process that died on this machine is taken
    over at once, one from another machine once it has not been renewed for 10 minutes. On object
    storage, run one job per store.
    """
    from .stages.label import run_label

    _echo(run_label(_config(ctx, LabelConfig, values)))


@cli.command()
@options_from(FeaturesConfig)
@click.pass_context
def features(ctx, **values):
    """A model's frozen pooled features (the classifier's input, fp16) for every sample of a split,
    into a feature store: the label store's layout (Zarr + index.parquet, shard-aligned, resumable,
    `verify`, `inspect`), written once by `label`'s machinery. `train --features STORE` then trains
    a probe from stores alone, decoding no image.

    \b
      w2s-pipe features --model dinov2_vits14 --data imagenet              # the training split
      w2s-pipe features --model dinov2_vits14 --data imagenet --split val  # the probe's validation
    """
    from .stages.label import run_label

    _echo(run_label(_config(ctx, FeaturesConfig, values).label_config()))


def _load_config(ctx, param, value):
    """--config: the recipe's values become this command's defaults, so the command line wins."""
    if value:
        from .pipeline.train.recipes import load_recipe
        from .stages.train_config import recipe_options

        params = {p.name for p in ctx.command.params}
        options = {name: kind for name, kind in recipe_options().items() if name in params}
        ctx.default_map = {**(ctx.default_map or {}), **load_recipe(value, options)}  # a W2SError is one line
    return value


def _from_recipe(ctx, exc: W2SError) -> W2SError:
    """A config error about an option whose value the recipe gave says so, naming the recipe."""
    param = next((p for p in ctx.command.params if exc.option in getattr(p, "opts", ())), None)
    if param is not None and ctx.get_parameter_source(param.name) == click.core.ParameterSource.DEFAULT_MAP:
        from .pipeline.train.recipes import recipe_path

        return W2SError(f"{exc} (set by --config {recipe_path(ctx.params['config'])})", option=exc.option)
    return exc


@cli.command()
@click.option("--config", default=None, is_eager=True, expose_value=True, callback=_load_config,
              help=spec_of(field_of(TrainConfig, "config")).help)
@options_from(TrainConfig, skip=("config",))
@click.pass_context
def train(ctx, **values):
    """Stage two: train a strong model from the data set's shards joined with the weak model's
    stored labels. Writes <workspace>/runs/<run>/ with config.json, metrics.jsonl, last.pt and
    best.pt. The weak model never runs again.

    \b
      w2s-pipe train --strong resnet18 --data digits --split weak --loss gt   # a weak model
      w2s-pipe train --strong vit_b16 --loss adaptconf --threshold 4.0
    """
    from .stages.train import run_train

    _echo(run_train(_config(ctx, TrainConfig, values)))


@cli.command()
def recipes():
    """The shipped training recipes (`train --config NAME`), each with the command that runs it."""
    from .pipeline.train.recipes import describe_recipes

    for line in describe_recipes():
        click.echo(line)


@cli.command("eval")
@options_from(EvalConfig)
@click.pass_context
def eval_cmd(ctx, **values):
    """Top-1 and top-5 accuracy of a trained model on a validation split, with the checkpoint, its
    step and the precision each figure is for; or, with --episodes, its few-shot accuracy."""
    from .stages.evaluate import run_eval

    _echo(run_eval(_config(ctx, EvalConfig, values)))


@cli.command()
@options_from(DemoConfig, skip=("overrides", "progress"))
@click.pass_context
def demo(ctx, **values):
    """The whole weak-to-strong study on digits in one command (about eight minutes on two CPU
    cores): a weak model, its labels, the strong ceiling, and a strong model trained from the
    labels with each loss, with and without ground truth, and with hard labels from the 70% of
    the labels the weak model is surest of (--keep-frac 0.7 --rank-by margin --per-class), over
    several seeds; then `report`."""
    from .stages.demo import run_demo

    _echo(run_demo(_config(ctx, DemoConfig, values), echo=click.echo))


@cli.command()
@options_from(StudyOptions)
@click.pass_context
def study(ctx, **values):
    """A grid of runs from one file (STUDY: a shipped study's name, see `w2s-pipe studies`, or a YAML
    file): its data, weak models, stores, ceilings and a grid over train's options times seeds, each
    made once, in dependency order; hyperparameters under `select:` chosen per loss on one split and
    the table scored on another. Then the study's report: the grid with mean ± std over seeds and
    PGR, the chosen values, accuracy against each swept value."""
    from .stages.study import run_study
    from .stages.study_config import load_study

    opts = _config(ctx, StudyOptions, values)
    _echo(run_study(load_study(opts.study, quick=opts.quick), out=opts.out, jobs=opts.jobs, cluster=opts.cluster,
                    dry_run=opts.dry_run, workspace=opts.workspace, echo=click.echo, plots=opts.plots))


@cli.command()
def studies():
    """The shipped studies (`w2s-pipe study NAME`), each with what it asks."""
    from .stages.study_config import describe_studies

    for line in describe_studies():
        click.echo(line)


@cli.command()
@options_from(ReportConfig)
@click.pass_context
def report(ctx, **values):
    """Weak model, strong ceiling and every weak-to-strong run of a workspace (default: the current
    one) with validation top-1 and performance gap recovered, PGR = (w2s - weak) / (ceiling - weak),
    each row's paired difference to the reference row, and what predicts the gain (each run's
    misfit to its weak model beside its gain); figures: accuracy per method, the weak labels'
    calibration, beta/alpha over training, curves, gain against misfit. Few-shot figures that
    `eval --run RUN --episodes N` recorded come as their own table."""
    from .stages.report import run_report

    cfg = _config(ctx, ReportConfig, values)
    result = run_report(cfg)
    click.echo(json.dumps(result, default=str)) if cfg.format == "json" else _echo(result)


@cli.command()
@options_from(InspectConfig)
@click.pass_context
def inspect(ctx, **values):
    """Statistics of a label store of any size, computed with dask: samples, classes, confidence
    and margin distributions, per-class prediction counts, and accuracy and calibration (ECE)
    against ground truth where the shards carry it, with the coverage-accuracy curve (the weak
    labels' accuracy on what train --keep-frac F --rank-by STAT [--per-class] keeps). Several
    STORES (of the same shards): their ensemble, each member's accuracy against each way of
    combining them, and the ensemble's curve."""
    from .stages.inspect import run_inspect

    cfg = _config(ctx, InspectConfig, values)
    stats = run_inspect(cfg)
    click.echo(json.dumps(stats)) if cfg.format == "json" else _echo(stats)


@cli.command()
@options_from(VerifyConfig)
@click.pass_context
def verify(ctx, **values):
    """Check a label store: attributes, completeness, markers against rows, one row per sample of
    the data, finite values, statistics against logits, index against arrays; exit status 1 on
    any problem, each reported with its shard and key."""
    from .stages.verify import run_verify

    result = run_verify(_config(ctx, VerifyConfig, values))
    _echo(result)
    if not result.ok:
        raise SystemExit(1)


@cli.command()
@click.pass_context
def datasets(ctx):
    """List the datasets the registry knows (built-in and the user's TOML file)."""
    from .pipeline.sources.datasets import describe_registry

    for line in describe_registry(ctx.obj["workspace"]):
        click.echo(line)


def main():
    from .pipeline.runtime.watchdog import register_stack_dumps  # stdlib only: --help stays quick

    register_stack_dumps()  # `kill -USR1 <pid>`: every thread's stack on stderr (a torchrun test past its limit asks so)
    cli(prog_name="w2s-pipe")


if __name__ == "__main__":
    main()
