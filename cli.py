"""The `w2s-pipe` command line: options -> a stage's config -> the stage -> a printed summary.

Heavy imports (torch, timm, zarr) happen inside the commands, so `--help` answers at once.
"""

from __future__ import annotations

import click

from . import __version__
from .errors import W2SError
from .pipeline.config.choices import (
    BAD_SAMPLE_POLICIES,
    DECODE_OPTIONS,
    DECODERS,
    ENSEMBLES,
    EVAL_PICKS,
    LOSSES,
    NOISY_SCENARIO,
    PRECISION_OPTIONS,
    RAMPS,
    RANK_BY,
    SCENARIOS,
    STORE_VIEWS,
    WEIGHT_BY,
)


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except W2SError as exc:
            raise click.ClickException(str(exc)) from None
        except KeyboardInterrupt:
            # 128 + SIGINT, as a shell reports it; what was finished is kept (see docs/guide.md, Reliability).
            click.echo("\ninterrupted", err=True)
            ctx.exit(130)


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


_NOISE_HELP = ("Corrupt the training splits' labels once (the paper's noisy-label scenario): symmetric:R gives "
               "int(R·N) samples a class drawn uniformly from all classes (the true one included); asymmetric:R moves "
               "each sample of a mapped class to its confusable class with chance R ({map}). The shards' cls is the "
               "noisy label, clean.cls the clean one; evaluation splits stay clean; the manifest records the rule, "
               "the seed and the realised flip rate per class.")


def _noise(spec, seed):
    from .pipeline.sources.noise import LabelNoise

    return LabelNoise.parse(spec, seed) if spec else None


@prepare.command("digits")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output directory [default: $W2S_DATA/digits, else <workspace>/data/digits].")
@click.option("--shard-size", type=int, default=256, show_default=True, help="Samples per shard.")
@click.option("--label-noise", default=None, help=_NOISE_HELP.format(map="digits: 1↔7, 3↔8, 4↔9"))
@click.option("--noise-seed", type=int, default=42, show_default=True, help="Seed of --label-noise (the official 42).")
@click.option("--few-shot", is_flag=True,
              help="The few-shot scenario's data set, digits-fewshot [default --out: $W2S_DATA/digits-fewshot]: weak, "
                   "transfer and val keep digits 0-4 (the base classes), and the split novel holds every image of "
                   "digits 5-9 (labelled 0-4), never trained on, for eval --episodes. Not with --label-noise.")
@click.pass_context
def prepare_digits_cmd(ctx, out, shard_size, label_noise, noise_seed, few_shot):
    """scikit-learn's handwritten digits (1797 real 8x8 images, shipped with the package) as PNG
    shards, split with a fixed seed into weak (600: the weak model's ground truth), transfer
    (897: what the weak model labels and the strong model learns from) and val (300)."""
    from .stages.prepare import default_data_dir, default_digits_dir, prepare_digits

    out = out or (default_data_dir("digits-fewshot", ctx.obj["workspace"]) if few_shot
                  else default_digits_dir(ctx.obj["workspace"]))
    result = prepare_digits(out, shard_size=shard_size, noise=_noise(label_noise, noise_seed), few_shot=few_shot)
    for split, shards in result.splits.items():
        click.echo(f"{split}: {sum(s.count for s in shards)} samples in {len(shards)} shards")
    click.echo(f"wrote {result.samples} samples to {result.out}")


def _prepare_cifar_command(name: str, classes: int, archive: str):
    @prepare.command(name, help=f"{name.upper()} ({classes} classes) from the python archive ARCHIVE ({archive}, as "
                                "downloaded) as PNG shards with a manifest: `train` is the labelling split, `test` the "
                                "validation split. The pickles are read without running code from them.")
    @click.argument("archive", type=click.Path(exists=True, dir_okay=False))
    @click.option("--out", type=click.Path(file_okay=False), default=None,
                  help=f"Output directory [default: $W2S_DATA/{name}, else <workspace>/data/{name}].")
    @click.option("--shard-size", type=int, default=1000, show_default=True, help="Samples per shard.")
    @click.option("--weak-split", type=int, default=0, show_default=True,
                  help="Carve this many training images (a fixed seeded choice) into a `weak` split for the weak "
                       "model's ground truth; the rest stay in `train`, which `label` labels.")
    @click.option("--label-noise", default=None, help=_NOISE_HELP.format(
        map="CIFAR-10: truck→automobile, bird→airplane, cat↔dog, deer→horse; CIFAR-100: the next class of its "
            "superclass"))
    @click.option("--noise-seed", type=int, default=42, show_default=True, help="Seed of --label-noise (the official 42).")
    @click.pass_context
    def command(ctx, archive, out, shard_size, weak_split, label_noise, noise_seed):
        from .stages.prepare import default_data_dir, prepare_cifar

        result = prepare_cifar(name, archive, out or default_data_dir(name, ctx.obj["workspace"]),
                               shard_size=shard_size, weak_split=weak_split, noise=_noise(label_noise, noise_seed))
        for split, shards in result.splits.items():
            click.echo(f"{split}: {sum(s.count for s in shards)} samples in {len(shards)} shards")
        click.echo(f"wrote {result.samples} samples to {result.out}; use --data {name}")
    return command


for _name, _classes, _archive in (("cifar10", 10, "cifar-10-python.tar.gz"), ("cifar100", 100, "cifar-100-python.tar.gz")):
    _prepare_cifar_command(_name, _classes, _archive)


@prepare.command("folder")
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output directory for the shards.")
@click.option("--split", default="train", show_default=True,
              help="Split name used in the shard names and manifest (for a single class tree).")
@click.option("--shard-size", type=int, default=1000, show_default=True, help="Samples per shard.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sample shuffle across shards.")
@click.option("--prefix", default=None, help="Shard name prefix [default: the folder's name].")
@click.option("--label-noise", default=None, help=_NOISE_HELP.format(map="the map of --noise-map"))
@click.option("--noise-seed", type=int, default=42, show_default=True, help="Seed of --label-noise (the official 42).")
@click.option("--noise-map", type=click.Path(dir_okay=False), default=None,
              help='--label-noise asymmetric:R: a JSON file mapping class folder names to the class each is mistaken '
                   'for, e.g. {"cat": "dog", "dog": "cat"}; classes it does not name keep their labels.')
@click.option("--noise-splits", default=None,
              help="--label-noise: the splits to noise, comma-separated [default: every split but val, valid, "
                   "validation and test].")
def prepare_folder_cmd(src, out, split, shard_size, seed, prefix, label_noise, noise_seed, noise_map, noise_splits):
    """An ImageFolder-style directory SRC (one sub-folder per class; classes numbered in sorted
    order) as shuffled shards `<prefix>-<split>-NNNNNN.tar` with a manifest. A SRC holding a
    `train/` folder of class folders is the ImageNet layout (`train/` and `val/`, one folder per
    class in each): every split folder in it is written in one call (--split is then unused), with
    one class numbering."""
    from .stages.prepare import prepare_folder

    result = prepare_folder(src, out, split=split, shard_size=shard_size, seed=seed, prefix=prefix,
                            noise=_noise(label_noise, noise_seed), noise_map=noise_map,
                            noise_splits=tuple(noise_splits.split(",")) if noise_splits else None)
    for name, shards in result.splits.items():
        click.echo(f"{name}: {sum(s.count for s in shards)} samples in {len(shards)} shards; "
                   f"use --data '{result.out}/{shards[0].name.rsplit('-', 1)[0]}-*.tar'")
    click.echo(f"wrote {result.samples} samples to {result.out}")


@cli.command()
@click.option("--weak", default=None, help="Weak timm model name or alias (vit_b16, r50, ...); optional with a checkpoint this tool wrote.")
@click.option("--data", default="digits", show_default=True,
              help="Dataset name from the registry (`w2s-pipe datasets`) or a shard pattern (/d/train-{000000..000127}.tar, s3://...).")
@click.option("--split", default=None, help="Split to label [default: the dataset's labelling split, e.g. train, or transfer for digits].")
@click.option("--labels", default=None, help="Store path or URL [default: <workspace>/stores/<data>-<split>-<weak>].")
@click.option("--weak-checkpoint", default=None,
              help="Weights: a checkpoint from `w2s-pipe train` or a plain timm state dict [default: timm pretrained].")
@click.option("--num-classes", type=int, default=None, help="Classes, for a shard pattern without a manifest [default: the checkpoint's head].")
@click.option("--img-size", type=int, default=None, help="Input size in pixels [default: the checkpoint's, else the model's data config].")
@click.option("--batch-size", type=int, default=256, show_default=True, help="Images per forward pass.")
@click.option("--workers", type=int, default=None,
              help="Data-loading processes [default: this rank's share of the CPU cores, less one; 0 loads in the main "
                   "process].")
@click.option("--precision", type=click.Choice(PRECISION_OPTIONS), default="auto", show_default=True,
              help="Autocast precision; auto is bf16 on GPU and on CPUs with native bf16, else fp32. Statistics are computed in float64.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--topk", type=int, default=None, help="Store only the top K logits per sample (values and indices) instead of all.")
@click.option("--decode", type=click.Choice(DECODE_OPTIONS), default="auto", show_default=True,
              help="Where images are decoded and resized. auto: the decoder an existing store began with, else gpu where "
                   "there is a CUDA device, else cpu. gpu: the loading processes only read bytes; each batch's JPEGs are "
                   "decoded in one nvJPEG call and resized in a few batched launches (within a grey level of pil on "
                   "average). cpu: libjpeg-turbo/libpng in the loading processes (2.7x less CPU than pil). pil: PIL, timm's "
                   "reference eval transform to the pixel. Recorded in the store; a store is finished with the decoder it "
                   "began with.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the weak model.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store made by a different job (model, checkpoint, data, ...).")
@click.option("--max-shards", type=int, default=None, help="Label at most this many shards (per rank) and stop; re-run to continue.")
@click.option("--on-bad-sample", type=click.Choice(BAD_SAMPLE_POLICIES), default="fail", show_default=True,
              help="fail: stop at a bad sample (undecodable image, no image field, non-integer label, repeated key) "
                   "naming shard, key and reason; skip: record it in skipped.parquet and go on (an unreadable or empty "
                   "shard is recorded whole).")
@click.option("--views", type=int, default=0, show_default=True,
              help="Also store the weak model's output on the K training views that `train` draws in passes "
                   "0..K-1 with the same --seed, --crop-scale, --hflip, --aa, --color-jitter, --reprob and mixing options (each "
                   "view's crop box and flip, a mixed view's partner and λ, its logits or top-k and statistics, under "
                   "views/), at the weak model's input size; `train` then replays them. 0: the centre view only. "
                   "With --decode cpu or pil.")
@click.option("--seed", type=int, default=0, show_default=True, help="--views: the seed the training runs will use.")
@click.option("--crop-scale", type=float, default=0.08, show_default=True,
              help="--views: the smallest area fraction of the random resized crop, as train's --crop-scale.")
@click.option("--hflip", type=float, default=0.5, show_default=True, help="--views: the flip chance, as train's --hflip.")
@click.option("--aa", default=None, help="--views: timm's auto-augment policy on each view, as train's --aa.")
@click.option("--color-jitter", type=float, default=0.0, show_default=True,
              help="--views: colour jitter on each view, as train's --color-jitter.")
@click.option("--reprob", type=float, default=0.0, show_default=True,
              help="--views: random erasing on each view, as train's --reprob (the same box and noise).")
@click.option("--mixup", type=float, default=0.0, show_default=True,
              help="--views: mix each view as `train --mixup` replaying the store will (each sample with another of "
                   "its shard, λ ~ Beta(α, α) drawn per sample and pass), and store the weak model's output on the "
                   "mixed image.")
@click.option("--cutmix", type=float, default=0.0, show_default=True, help="--views: cutmix's α, as --mixup.")
@click.option("--mixup-prob", type=float, default=1.0, show_default=True, help="--views: the chance a view is mixed.")
@click.option("--mixup-switch-prob", type=float, default=0.5, show_default=True,
              help="--views: the chance of cutmix rather than mixup when both are on.")
@click.option("--stall-timeout", type=float, default=600.0, show_default=True,
              help="Seconds a rank may wait for a batch, a step or the other ranks before it ends the run with one "
                   "line naming the rank, where it was and what it waited for, then every thread's stack (exit 124); "
                   "also the process group's collective timeout under torchrun. 0: wait for ever.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def label(ctx, weak, data, split, labels, weak_checkpoint, num_classes, img_size, batch_size, workers, precision,
          device, topk, decode, compile_, overwrite, max_shards, on_bad_sample, views, seed, crop_scale, hflip, aa,
          color_jitter, reprob, mixup, cutmix, mixup_prob, mixup_switch_prob, stall_timeout, quiet):
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
    from .pipeline.runtime.distributed import dist_info
    from .stages.label import LabelConfig, run_label

    cfg = LabelConfig(
        weak=weak, data=data, split=split, labels=labels, weak_checkpoint=weak_checkpoint, num_classes=num_classes,
        img_size=img_size, batch_size=batch_size, workers=workers, precision=precision, device=device, topk=topk,
        decode=decode, compile=compile_, overwrite=overwrite, max_shards=max_shards, on_bad_sample=on_bad_sample,
        views=views, seed=seed, crop_scale=crop_scale, hflip=hflip, aa=aa, color_jitter=color_jitter, reprob=reprob,
        mixup=mixup, cutmix=cutmix, mixup_prob=mixup_prob, mixup_switch_prob=mixup_switch_prob,
        stall_timeout=stall_timeout, workspace=ctx.obj["workspace"], progress=not quiet,
    )
    result = run_label(cfg)
    if not dist_info().is_main:
        return
    if result.already_complete:
        click.echo(f"store {result.store}: already complete ({result.samples_total} samples in {result.shards_total} "
                   "shards; its index and rows checked against what label wrote); nothing to do")
        return
    click.echo(f"labelled {result.samples} samples in {result.shards} shards at {result.images_per_s:.0f} img/s "
               f"({result.seconds:.1f} s)")
    if result.skipped:
        click.echo(f"skipped {result.skipped} bad samples or shards; see skipped.parquet in the store for keys and reasons")
    if result.complete:
        from .storage import open_store

        size = open_store(result.store).size_bytes()
        click.echo(f"store {result.store}: complete, {result.samples_total} samples, {result.shards_total} shards, "
                   f"{size / 1024:.0f} KiB ({size / max(1, result.samples_total):.0f} B/sample)")
    elif result.claimed_elsewhere:
        holders = sorted({f"pid {c['pid']} on {c['host']}" for c in result.claimed_elsewhere})
        click.echo(f"store {result.store}: {len(result.claimed_elsewhere)} shards are being labelled by another process "
                   f"({', '.join(holders)}); it will finish the store")
    else:
        click.echo(f"store {result.store}: incomplete; re-run the same command to finish it")


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
    option = str(exc).split(" ", 1)[0]
    param = next((p for p in ctx.command.params if option in getattr(p, "opts", ())), None)
    if param is not None and ctx.get_parameter_source(param.name) == click.core.ParameterSource.DEFAULT_MAP:
        from .pipeline.train.recipes import recipe_path

        return W2SError(f"{exc} (set by --config {recipe_path(ctx.params['config'])})")
    return exc


@cli.command()
@click.option("--config", default=None, is_eager=True, expose_value=True, callback=_load_config,
              help="A recipe: a shipped name (`w2s-pipe recipes`: cifar_v0, demo, ...) or a YAML file of train options. "
                   "Options given on the command line win; the resolved settings are saved in the run's config.json.")
@click.option("--strong", required=True, help="Strong timm model name or alias (vit_b16, resnet50, ...).")
@click.option("--loss", default="adaptconf", show_default=True,
              type=click.Choice(tuple(LOSSES)),
              help="; ".join(f"{name}: {loss.summary}" for name, loss in LOSSES.items()) + ".")
@click.option("--labels", default=None,
              help="Label store path or URL [default: the workspace's most recent complete store]; several, comma-"
                   "separated (A,B,C: stores of the same shards, e.g. weak models of other seeds), train from their "
                   "ensemble (--ensemble).")
@click.option("--ensemble", type=click.Choice(ENSEMBLES), default=None,
              help="How several --labels stores combine, per sample [default: mean-prob]: mean-prob, the log of the "
                   "members' mean softmax; mean-logit, their mean logits; vote, the log of the share of members whose "
                   "argmax is each class (ties to the lower class). --select can use the column agreement: how many "
                   "members' argmax is the ensemble's.")
@click.option("--teacher", default=None,
              help="Online teacher, instead of a store: a weak checkpoint (from `w2s-pipe train`, or a timm state dict "
                   "with --teacher-model) run on every batch's exact views, after the crop, flip, --aa, erasing and "
                   "mixing, resized to its own input size and normalised with its own mean and std, as the paper's "
                   "official code runs it. Needs --data (shards without a manifest take the teacher's classes); costs a "
                   "teacher forward per step.")
@click.option("--store-view", type=click.Choice(STORE_VIEWS), default="auto", show_default=True,
              help="Which of a store's outputs to learn from. auto: a per-view store's views replayed (pass p trains "
                   "on stored view p mod K, cropped from the box the weak model saw; --seed, --crop-scale, --hflip, "
                   "--aa, --color-jitter, --reprob and the mixing options must be the store's (its mixed views "
                   "replayed sample by sample, each with the partner and λ it was labelled with)), else the centre "
                   "view; center: the centre view of any store; replay: "
                   "the views, or an error for a centre store.")
@click.option("--teacher-model", default=None, help="The timm name of a --teacher state dict (a checkpoint from train names its own).")
@click.option("--data", default=None, help="Data set or shard pattern; needed with --loss gt and no store, and with --teacher; else it must match the store.")
@click.option("--split", default=None, help="Split of --data [default: the data set's labelling split].")
@click.option("--val-data", default=None, help="Validation data set or shard pattern [default: the data set's validation split].")
@click.option("--val-split", default=None, help="Validation split of the data set [default: its val split].")
@click.option("--no-eval", is_flag=True, help="Skip validation (no best.pt).")
@click.option("--img-size", type=int, default=None, help="Input size in pixels [default: the model's data config].")
@click.option("--crop-pct", type=float, default=None,
              help="Evaluation's centre crop: resize to size / crop-pct, crop the centre [default: the model's data config]; "
                   "saved with the checkpoints, so `eval` and `label` use it too.")
@click.option("--pretrained", is_flag=True, help="Start from timm's pretrained weights (needs the model hub or its cache).")
@click.option("--strong-checkpoint", default=None,
              help="Start from a local checkpoint or state dict (e.g. an MAE ViT-B); its head is replaced.")
@click.option("--linear-probe", is_flag=True, help="Freeze the backbone and train only the classifier head.")
@click.option("--drop-path", type=float, default=None, help="Stochastic depth rate (timm's drop_path_rate), for models that have it.")
@click.option("--head-init-std", type=float, default=None,
              help="Re-initialise the classifier: truncated-normal weights with this std, zero biases (MAE fine-tuning: 2e-5).")
@click.option("--threshold", type=float, default=0.5, show_default=True,
              help="adaptconf's tau (0.5 in the paper's CIFAR runs, 4.0 in its ImageNet transfer); augconf's final alpha.")
@click.option("--kd-temperature", type=float, default=1.0, show_default=True, help="Temperature T of the KD term.")
@click.option("--warmup-frac", type=float, default=0.3, show_default=True,
              help="augconf: fraction of training over which alpha ramps up from 0 (the official superalignment_rate).")
@click.option("--ramp", type=click.Choice(RAMPS), default="epoch", show_default=True,
              help="augconf: alpha steps up once per epoch, as the official code (epoch / (epochs x --warmup-frac)), or "
                   "at every step.")
@click.option("--beta-warmup-frac", type=float, default=0.0, show_default=True,
              help="adaptconf: fraction of training over which beta is scaled up from 0 (0: off).")
@click.option("--kd-weight", type=float, default=1.0, show_default=True,
              help="Weight of the weak-label loss (its KD and self-confidence terms; the official kd_loss_weight).")
@click.option("--gt-weight", type=float, default=0.0, show_default=True,
              help="Add this weight times the ground-truth criterion to any loss (the official gt_loss_weight, 1.0 in "
                   "every official run; 0 is the paper's weak-to-strong setting).")
@click.option("--smoothing", type=float, default=0.0, show_default=True,
              help="Label smoothing of the ground-truth criterion (timm's; with --mixup/--cutmix, of the mixed targets). "
                   "It touches only --loss gt and the --gt-weight term, never the weak labels.")
@click.option("--skip-missing", is_flag=True,
              help="Train without samples that have no row in the store instead of stopping; each epoch's count is logged.")
@click.option("--select", default=None,
              help="Train only on the store's samples for which this is true: an expression over its index columns "
                   "(key, shard, row, pred, confidence, margin, entropy, and label where the shards carry one), e.g. "
                   "\"confidence >= 0.6\" or \"margin > 0.2 AND pred != 3\" (=, !=, <, <=, >, >=, AND, OR, NOT, "
                   "parentheses, numbers, 'strings'; a column against a column too). Chosen once, before training; "
                   "left-out samples are never decoded, and an epoch is the kept samples.")
@click.option("--keep-frac", type=float, default=None,
              help="Keep the most trusted fraction (after --select): ceil(F x n) samples by --rank-by, ties to the "
                   "earlier shard and row.")
@click.option("--rank-by", type=click.Choice(RANK_BY), default="margin", show_default=True,
              help="--keep-frac's ranking: a higher margin (top-1 minus top-2 probability) or confidence, or a lower "
                   "entropy, is more trusted; of an ensemble, also more members agreeing with it (agreement).")
@click.option("--per-class", is_flag=True,
              help="--keep-frac within each weak predicted class, so that no class is emptied.")
@click.option("--weight-by", type=click.Choice(WEIGHT_BY), default=None,
              help="Weigh each sample's weak-label loss by its stored statistic s (the replayed view's with a per-view "
                   "store; under mixup/cutmix λ·s + (1-λ)·s of the partner): w = s / mean(s) over the batch, so the "
                   "mean weight is 1 (all-zero: even), loss = mean(w · weak-label loss) + the unweighted --gt-weight "
                   "term.")
@click.option("--skip-shard-check", is_flag=True,
              help="Train even on shards whose size or contents (first and last 64 KiB) changed since they were labelled; "
                   "by default such a shard stops the run, since its stored labels belong to other images.")
@click.option("--opt", default="adamw", show_default=True,
              help="Any timm optimizer (timm.optim.list_optimizers()): adamw, sgd (with Nesterov momentum), momentum "
                   "(without), lamb, lion, ...")
@click.option("--lr", type=float, default=1e-3, show_default=True, help="Peak learning rate.")
@click.option("--momentum", type=float, default=0.9, show_default=True, help="Momentum of sgd, momentum and the like.")
@click.option("--layer-decay", type=float, default=None,
              help="Layer-wise rate decay (timm's): layer group d of L trains at lr x decay^(L - d), the head at lr.")
@click.option("--weight-decay", type=float, default=0.05, show_default=True,
              help="Weight decay; not on biases, norms or other 1-d parameters, nor on a ViT's position embedding and "
                   "class token (timm's groups).")
@click.option("--sched", default="cosine", show_default=True,
              help="Learning-rate schedule: cosine (to --min-lr at the last step), step (x --decay-rate every "
                   "--decay-epochs) or const.")
@click.option("--min-lr", type=float, default=0.0, show_default=True, help="cosine: the rate of the last step.")
@click.option("--warmup-epochs", type=int, default=0, show_default=True,
              help="Epochs of linear warm-up from --warmup-lr to --lr, counted inside --epochs.")
@click.option("--warmup-lr", type=float, default=1e-5, show_default=True, help="The rate of the first warm-up step.")
@click.option("--decay-epochs", type=int, default=None, help="step: epochs between decays [default: a third of --epochs].")
@click.option("--decay-rate", type=float, default=0.1, show_default=True, help="step: the factor of each decay.")
@click.option("--epochs", type=int, default=10, show_default=True, help="Epochs (an epoch is samples / (ranks x batch) steps).")
@click.option("--steps-per-epoch", type=int, default=None, help="Override the steps in an epoch.")
@click.option("--batch-size", type=int, default=128, show_default=True, help="Images per step on each rank.")
@click.option("--workers", type=int, default=None,
              help="Data-loading processes per rank [default: this rank's share of the CPU cores, less one].")
@click.option("--precision", type=click.Choice(PRECISION_OPTIONS), default="auto", show_default=True,
              help="Autocast precision; auto is bf16 on GPU and on CPUs with native bf16, else fp32.")
@click.option("--device", default="auto", show_default=True,
              help="auto, cpu, cuda or cuda:N; under torchrun each process takes the GPU of its local rank.")
@click.option("--deterministic", is_flag=True,
              help="Deterministic GPU kernels only, so that the same command gives the same weights on a GPU too "
                   "(slower). On the CPU a run is reproducible without it, for a fixed thread count.")
@click.option("--clip-grad", type=float, default=None, help="Clip the gradient norm to this value.")
@click.option("--grad-accum", type=int, default=1, show_default=True,
              help="Batches per optimizer step (gradient accumulation): a step sees --batch-size x this many images per "
                   "rank, and an epoch has that many fewer steps.")
@click.option("--compile", "compile", is_flag=True, help="torch.compile the student for training (the first steps compile).")
@click.option("--channels-last/--no-channels-last", default=None,
              help="Channels-last memory layout for the student [default: on CUDA].")
@click.option("--model-ema", is_flag=True,
              help="Keep an exponential moving average of the weights (timm's ModelEmaV3): evaluated each epoch beside "
                   "the model (val_top1_ema) and saved as ema.pt.")
@click.option("--model-ema-decay", type=float, default=0.9998, show_default=True, help="Decay of --model-ema per step.")
@click.option("--seed", type=int, default=0, show_default=True,
              help="Seed of initialisation, data order and augmentation: a sample's view is a function of (seed, shard, "
                   "key, pass), the same whatever the ranks, workers or batch size.")
@click.option("--decode", type=click.Choice(DECODE_OPTIONS), default="auto", show_default=True,
              help="Where training images are decoded, cropped and flipped. auto: gpu where there is a CUDA device "
                   "(cpu with --aa or --color-jitter, which run in the loading processes), else cpu. gpu: the loading processes only read bytes; each batch is decoded (nvJPEG) and cropped on "
                   "the device in a few launches. cpu: libjpeg-turbo and uint8 tensor resizing in the loading processes. "
                   "pil: PIL, timm's RandomResizedCrop to the pixel. All three draw the same view for a sample.")
@click.option("--hflip", type=float, default=0.5, show_default=True, help="Horizontal flip probability.")
@click.option("--color-jitter", type=float, default=0.0, show_default=True,
              help="Colour jitter strength (brightness, contrast, saturation; with --decode cpu or pil).")
@click.option("--crop-scale", type=float, default=0.08, show_default=True, help="Smallest area fraction of the random resized crop.")
@click.option("--aa", default=None,
              help="timm's auto-augment policy after the crop and flip: rand-m9-mstd0.5-inc1 (RandAugment), "
                   "original-mstd0.5 (AutoAugment), augmix-m5-w4-d2, ... Runs in the loading processes (--decode cpu or "
                   "pil; auto picks cpu), drawn per sample from (seed, shard, key, pass).")
@click.option("--reprob", type=float, default=0.0, show_default=True,
              help="Random erasing probability (timm's, pixel mode: one box of 2-33%% of the image filled with normal "
                   "noise after normalisation); the box and the noise are part of each sample's view (drawn from seed, "
                   "shard, key and pass), applied on the device.")
@click.option("--mixup", type=float, default=0.0, show_default=True,
              help="Mixup alpha (timm's, per batch; 0: off). A store's weak labels are mixed linearly, as probabilities "
                   "with the same lambda and pairing: an approximation of the teacher's output on the mixed image "
                   "(docs/guide.md, Mixup and cutmix); an online --teacher sees the mixed image itself.")
@click.option("--cutmix", type=float, default=0.0, show_default=True,
              help="Cutmix alpha (0: off); the weak labels are mixed with the pasted area's lambda.")
@click.option("--mixup-prob", type=float, default=1.0, show_default=True, help="Chance that a batch is mixed at all.")
@click.option("--mixup-switch-prob", type=float, default=0.5, show_default=True,
              help="Chance of cutmix rather than mixup when both are on.")
@click.option("--shuffle-buffer", type=int, default=1000, show_default=True,
              help="Encoded samples in the shuffle buffer of each loading process (decoded only as they leave it).")
@click.option("--run-name", "run", default=None,
              help="Run name under <workspace>/runs, or a path [default: <model>-<loss>-<time>]. (Not --run: torchrun "
                   "would read that as its own --run-path.)")
@click.option("--resume", is_flag=True,
              help="Continue the run named by --run-name from its last.pt, exactly where it stopped (same samples, views "
                   "and generators; on the CPU, the uninterrupted run's weights). Any setting other than --max-steps, "
                   "--log-every and --quiet must be the same; a difference is refused by name.")
@click.option("--max-steps", type=int, default=None, help="Stop after this many steps in this invocation; --resume continues.")
@click.option("--log-every", type=int, default=20, show_default=True, help="Steps per metrics.jsonl record.")
@click.option("--stall-timeout", type=float, default=600.0, show_default=True,
              help="Seconds a rank may wait for a batch, a step or the other ranks before it ends the run with one "
                   "line naming the rank, where it was and what it waited for, then every thread's stack (exit 124); "
                   "also the process group's collective timeout under torchrun. 0: wait for ever.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def train(ctx, quiet, **options):
    """Stage two: train a strong model from the data set's shards joined with the weak model's
    stored labels. Writes <workspace>/runs/<run>/ with config.json, metrics.jsonl, last.pt and
    best.pt. The weak model never runs again.

    \b
      w2s-pipe train --strong resnet18 --data digits --split weak --loss gt   # a weak model
      w2s-pipe train --strong vit_b16 --loss adaptconf --threshold 4.0
    """
    from .pipeline.runtime.distributed import dist_info
    from .stages.train import TrainConfig, run_train

    try:
        cfg = TrainConfig(**options, workspace=ctx.obj["workspace"], progress=not quiet)
    except W2SError as exc:
        raise _from_recipe(ctx, exc) from None
    result = run_train(cfg)
    if not dist_info().is_main:
        return
    val = f", val top-1 {result.val_top1:.4f} top-5 {result.val_top5:.4f}" if result.val_top1 is not None else ""
    best = f" (best {result.best_top1:.4f})" if result.best_top1 is not None else ""
    state = "finished" if result.finished else "stopped (continue with --resume)"
    click.echo(f"{state} at step {result.step}, epoch {result.epoch}{val}{best} in {result.seconds:.0f} s")
    click.echo(f"run {result.run_dir}")


@cli.command()
def recipes():
    """The shipped training recipes (`train --config NAME`), each with the command that runs it."""
    from .pipeline.train.recipes import shipped

    for recipe in shipped():
        click.echo(f"{recipe.name}\n  {recipe.command}\n  {recipe.about}\n")


@cli.command("eval")
@click.option("--run", default=None, help="Run name or directory; evaluates its final weights (last.pt).")
@click.option("--pick", type=click.Choice(EVAL_PICKS), default="last", show_default=True,
              help="With --run: last.pt (the final weights), best.pt (the epoch with the best val top-1; picked on the "
                   "validation split, so its figure there is optimistic) or ema.pt (the moving average of a "
                   "--model-ema run).")
@click.option("--checkpoint", default=None, help="A checkpoint written by `train`.")
@click.option("--data", default=None, help="Data set or shard pattern [default: what the run trained on].")
@click.option("--split", default=None, help="Split [default: the data set's validation split].")
@click.option("--batch-size", type=int, default=256, show_default=True, help="Images per forward pass.")
@click.option("--workers", type=int, default=None, help="Data-loading processes [default: CPU cores - 1].")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--precision", type=click.Choice(PRECISION_OPTIONS), default=None,
              help="Autocast precision [default: the one the checkpoint was trained in, as training's own evaluation "
                   "used; fp32 for a checkpoint that does not say].")
@click.option("--decode", type=click.Choice(DECODERS), default=None,
              help="Image decoder, as `label --decode` [default: the one the run trained with where this device can "
                   "use it, else cpu].")
@click.option("--episodes", type=int, default=0, show_default=True,
              help="Few-shot instead (the paper's few-shot scenario, as Meta-Baseline): this many episodes on the "
                   "split, each --ways classes with --shots support and --queries query samples per class, a query "
                   "classified by cosine similarity of the model's pooled pre-logit features to each class's mean "
                   "support feature; mean accuracy and its 95% interval per shot count.")
@click.option("--ways", type=int, default=5, show_default=True, help="--episodes: classes per episode.")
@click.option("--shots", default="1,5", show_default=True, help="--episodes: support samples per class, comma-separated.")
@click.option("--queries", type=int, default=15, show_default=True, help="--episodes: query samples per class.")
@click.option("--episode-seed", type=int, default=0, show_default=True,
              help="--episodes: the episodes' seed (two models compared on the same episodes).")
@click.pass_context
def eval_cmd(ctx, shots, **options):
    """Top-1 and top-5 accuracy of a trained model on a validation split, with the checkpoint, its
    step and the precision each figure is for; or, with --episodes, its few-shot accuracy."""
    from .stages.evaluate import EvalConfig, run_eval

    try:
        shot_counts = tuple(int(k) for k in shots.split(","))
    except ValueError:
        raise click.BadParameter(f"{shots!r}: give integers, comma-separated (1,5)", param_hint="--shots") from None
    r = run_eval(EvalConfig(**options, shots=shot_counts, workspace=ctx.obj["workspace"]))
    at = f"step {r['step']}, epoch {r['epoch']}, " if r["step"] is not None else ""
    if "few_shot" in r:
        for k, f in r["few_shot"].items():
            click.echo(f"{r['data']} {r['split']}: {r['ways']}-way {k}-shot {f['accuracy']:.4f} ± {f['ci95']:.4f} "
                       f"(95% interval, {f['episodes']} episodes of {r['queries']} queries per class, seed "
                       f"{r['episode_seed']}; {r['samples']} samples, {r['feature_dim']}-d features)")
    else:
        click.echo(f"{r['data']} {r['split']}: top-1 {r['top1']:.4f}  top-5 {r['top5']:.4f}  ({r['samples']} samples)")
    click.echo(f"checkpoint {r['checkpoint']} ({at}{r['picked']}), {r['precision']}, --decode {r['decode']}")
    click.echo(f"evaluated on {r['pattern']}" + (f"; trained from the {r['trained_on']}" if r["trained_on"] else ""))
    if r.get("recorded"):
        click.echo(f"recorded in {r['recorded']} (report shows it)")
    if r.get("label_noise"):
        click.echo(f"scored against the clean labels ({r['labels']}): the shards' own labels carry {r['label_noise']}")


@cli.command()
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="The demo's own workspace [default: <workspace>/demo]; an earlier demo there is replaced.")
@click.option("--seeds", type=int, default=3, show_default=True, help="Seeds per configuration; tables show mean ± std.")
@click.option("--quick", is_flag=True,
              help="A smoke-sized version (tiny models, a few steps): 21 s on a 2-core CPU; its accuracies are those of "
                   "barely trained models, so PGR is often undefined there (the report says why).")
@click.option("--scenario", type=click.Choice(SCENARIOS), default="standard", show_default=True,
              help="standard: the paper's weak-to-strong setting; noisy: its noisy-label one, the weak and transfer "
                   "splits' labels corrupted once (symmetric 0.2, seed 42: the weak model, the ceiling and the +gt runs "
                   "learn from noisy labels; val stays clean); few-shot: trained on digits 0-4 (digits-fewshot), every "
                   "model also evaluated 5-way 1- and 5-shot on digits 5-9, never trained on (600 episodes, the same "
                   "for all) [default workspace: <workspace>/demo-<scenario>].")
@click.option("--label-noise", default=None,
              help=f"--scenario noisy: the noise, symmetric:R or asymmetric:R (digits' map: 1↔7, 3↔8, 4↔9), seed 42 "
                   f"[default: {NOISY_SCENARIO}].")
@click.pass_context
def demo(ctx, out, seeds, quick, scenario, label_noise):
    """The whole weak-to-strong study on digits in one command (about eight minutes on two CPU
    cores): a weak model, its labels, the strong ceiling, and a strong model trained from the
    labels with each loss, with and without ground truth, and with hard labels from the 70% of
    the labels the weak model is surest of (--keep-frac 0.7 --rank-by margin --per-class), over
    several seeds; then `report`."""
    from .pipeline.runtime.workspace import workspace_dir
    from .stages.demo import DemoConfig, run_demo
    from .stages.report import few_shot_markdown, markdown_table

    out = out or str(workspace_dir(ctx.obj["workspace"]) / ("demo" if scenario == "standard" else f"demo-{scenario}"))
    if label_noise and scenario != "noisy":
        raise click.UsageError("--label-noise is the noisy scenario's: add --scenario noisy")
    chosen = {"label_noise": (label_noise or NOISY_SCENARIO) if scenario == "noisy" else None,
              "few_shot": scenario == "few-shot"}
    cfg = DemoConfig.quick(out, seeds=seeds, **chosen) if quick else DemoConfig(out=out, seeds=seeds, **chosen)
    report = run_demo(cfg, echo=click.echo)
    click.echo("")
    click.echo(markdown_table(report))
    for table in report["few_shot"]:
        click.echo("\n" + few_shot_markdown(table))
    click.echo(f"\ndemo finished in {report['seconds'] / 60:.1f} min; report {report['markdown']}")


@cli.command()
@click.argument("workspace", required=False, type=click.Path(file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Where report.md, report.json and the PNGs go [default: <workspace>/report].")
@click.option("--format", "fmt", type=click.Choice(["md", "json"]), default="md", show_default=True,
              help="What to print: the Markdown table, or the whole report as JSON for scripts.")
@click.option("--no-plots", is_flag=True, help="Skip the figures.")
@click.pass_context
def report(ctx, workspace, out, fmt, no_plots):
    """Weak model, strong ceiling and every weak-to-strong run of a workspace (default: the current
    one) with validation top-1 and performance gap recovered, PGR = (w2s - weak) / (ceiling - weak);
    figures: accuracy per method, the weak labels' calibration, beta/alpha over training, curves.
    Few-shot figures that `eval --run RUN --episodes N` recorded come as their own table."""
    import json

    from .stages.report import ReportConfig, few_shot_markdown, markdown_table, notes, run_report

    result = run_report(ReportConfig(workspace=workspace or ctx.obj["workspace"], out=out, plots=not no_plots))
    if fmt == "json":
        click.echo(json.dumps(result, default=str))
    else:
        click.echo(f"workspace {result['workspace']}\n")
        click.echo(markdown_table(result))
        for line in notes(result):
            click.echo(line)
        for table in result["few_shot"]:
            click.echo("\n" + few_shot_markdown(table))
        click.echo(f"\nreport {result['markdown']}")


@cli.command()
@click.argument("stores", nargs=-1, required=True)
@click.option("--out", type=click.Path(file_okay=False), default=None, help="Where the figures go [default: <workspace>/inspect/<store>].")
@click.option("--format", "fmt", type=click.Choice(["text", "json"]), default="text", show_default=True, help="Output format.")
@click.option("--no-plots", is_flag=True, help="Skip the figures.")
@click.pass_context
def inspect(ctx, stores, out, fmt, no_plots):
    """Statistics of a label store of any size, computed with dask: samples, classes, confidence
    and margin distributions, per-class prediction counts, and accuracy and calibration (ECE)
    against ground truth where the shards carry it, with the coverage-accuracy curve (the weak
    labels' accuracy on what train --keep-frac F --rank-by STAT [--per-class] keeps). Several
    STORES (of the same shards): their ensemble, each member's accuracy against each way of
    combining them, and the ensemble's curve."""
    import json

    from .stages.inspect import InspectConfig, format_text, run_inspect

    stats = run_inspect(InspectConfig(store=",".join(stores), out=out, workspace=ctx.obj["workspace"], plots=not no_plots))
    click.echo(json.dumps(stats) if fmt == "json" else format_text(stats))


@cli.command()
@click.argument("store")
@click.option("--recompute", type=int, default=0, show_default=True,
              help="Re-run the weak model (recorded checkpoint and preprocessing) on this many random samples and compare.")
@click.option("--no-data", is_flag=True, help="Skip reading the shards (the one-row-per-sample check).")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed choosing the --recompute samples.")
@click.option("--device", default="auto", show_default=True, help="Device for --recompute: auto, cpu, cuda or cuda:N.")
def verify(store, recompute, no_data, seed, device):
    """Check a label store: attributes, completeness, markers against rows, one row per sample of
    the data, finite values, statistics against logits, index against arrays; exit status 1 on
    any problem, each reported with its shard and key."""
    from .stages.verify import VerifyConfig, run_verify

    report = run_verify(VerifyConfig(store=store, recompute=recompute, check_data=not no_data, seed=seed, device=device))
    for check, found in report.checks:
        click.echo(f"{'ok' if not found else 'FAIL'}  {check}" + (f": {found} problems" if found else ""))
    for problem in report.problems:
        click.echo(f"  {problem}")
    if not report.ok:
        raise SystemExit(1)
    click.echo(f"store {store}: no problems found")


@cli.command()
@click.pass_context
def datasets(ctx):
    """List the datasets the registry knows (built-in and the user's TOML file)."""
    from .pipeline.sources.datasets import load_registry, user_registry_path

    for name, entry in sorted(load_registry(ctx.obj["workspace"]).items()):
        splits = ", ".join(f"{s}{'*' if s == entry.label_split else ''}" for s in entry.splits)
        click.echo(f"{name}: {entry.num_classes} classes; splits {splits}")
    click.echo(f"(* the split `label` uses by default; user entries: {user_registry_path(ctx.obj['workspace'])})")


def main():
    from .pipeline.runtime.watchdog import register_stack_dumps  # stdlib only: --help stays quick

    register_stack_dumps()  # `kill -USR1 <pid>`: every thread's stack on stderr (a torchrun test past its limit asks so)
    cli(prog_name="w2s-pipe")


if __name__ == "__main__":
    main()
