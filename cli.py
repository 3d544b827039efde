"""The `w2s-pipe` command line: options -> a stage's config -> the stage -> a printed summary.

Heavy imports (torch, timm, zarr) happen inside the commands, so `--help` answers at once.
"""

from __future__ import annotations

import click

from . import __version__
from .errors import W2SError


class _Group(click.Group):
    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except W2SError as exc:
            raise click.ClickException(str(exc)) from None


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
    """
    ctx.obj = {"workspace": workspace}


@cli.group(cls=_Group)
def prepare():
    """Turn a data set into WebDataset shards with a manifest."""


@prepare.command("digits")
@click.option("--out", type=click.Path(file_okay=False), default=None,
              help="Output directory [default: $W2S_DATA/digits, else <workspace>/data/digits].")
@click.option("--shard-size", type=int, default=256, show_default=True, help="Samples per shard.")
@click.pass_context
def prepare_digits_cmd(ctx, out, shard_size):
    """scikit-learn's handwritten digits (1797 real 8x8 images, shipped with the package) as PNG
    shards, split with a fixed seed into weak (600: the weak model's ground truth), transfer
    (897: what the weak model labels and the strong model learns from) and val (300)."""
    from .stages.prepare import default_digits_dir, prepare_digits

    result = prepare_digits(out or default_digits_dir(ctx.obj["workspace"]), shard_size=shard_size)
    for split, shards in result.splits.items():
        click.echo(f"{split}: {sum(s.count for s in shards)} samples in {len(shards)} shards")
    click.echo(f"wrote {result.samples} samples to {result.out}")


@prepare.command("folder")
@click.argument("src", type=click.Path(exists=True, file_okay=False))
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Output directory for the shards.")
@click.option("--split", default="train", show_default=True, help="Split name used in the shard names and manifest.")
@click.option("--shard-size", type=int, default=1000, show_default=True, help="Samples per shard.")
@click.option("--seed", type=int, default=0, show_default=True, help="Seed of the sample shuffle across shards.")
@click.option("--prefix", default=None, help="Shard name prefix [default: the folder's name].")
def prepare_folder_cmd(src, out, split, shard_size, seed, prefix):
    """An ImageFolder-style directory SRC (one sub-folder per class; classes numbered in sorted
    order) as shuffled shards `<prefix>-<split>-NNNNNN.tar` with a manifest."""
    from .stages.prepare import prepare_folder

    result = prepare_folder(src, out, split=split, shard_size=shard_size, seed=seed, prefix=prefix)
    shards = result.splits[split]
    click.echo(f"wrote {result.samples} samples in {len(shards)} shards to {result.out}")
    click.echo(f"use: --data '{result.out}/{shards[0].name.rsplit('-', 1)[0]}-*.tar'")


@cli.command()
@click.option("--weak", default=None, help="Weak timm model name or alias (vit_b16, r50, ...); optional with a checkpoint this tool wrote.")
@click.option("--data", default="digits", show_default=True,
              help="Dataset name from the registry (`w2s-pipe datasets`) or a shard pattern (/d/train-{000000..000127}.tar, s3://...).")
@click.option("--split", default=None, help="Split to label [default: the dataset's labelling split, e.g. train, or transfer for digits].")
@click.option("--labels", default=None, help="Store path or URL [default: <workspace>/stores/<data>-<split>-<weak>].")
@click.option("--weak-checkpoint", type=click.Path(dir_okay=False), default=None,
              help="Weights: a checkpoint from `w2s-pipe train` or a plain timm state dict [default: timm pretrained].")
@click.option("--num-classes", type=int, default=None, help="Classes, for a shard pattern without a manifest [default: the checkpoint's head].")
@click.option("--img-size", type=int, default=None, help="Input size in pixels [default: the checkpoint's, else the model's data config].")
@click.option("--batch-size", type=int, default=256, show_default=True, help="Images per forward pass.")
@click.option("--workers", type=int, default=None, help="Data-loading processes [default: CPU cores - 1, at most 8; 0 loads in the main process].")
@click.option("--precision", type=click.Choice(["auto", "bf16", "fp16", "fp32"]), default="auto", show_default=True,
              help="Autocast precision; auto is bf16 on GPU and on CPUs with native bf16, else fp32. Statistics are float32.")
@click.option("--device", default="auto", show_default=True, help="auto, cpu, cuda or cuda:N.")
@click.option("--topk", type=int, default=None, help="Store only the top K logits per sample (values and indices) instead of all.")
@click.option("--compile", "compile_", is_flag=True, help="torch.compile the weak model.")
@click.option("--overwrite", is_flag=True, help="Replace an existing store made by a different job (model, checkpoint, data, ...).")
@click.option("--max-shards", type=int, default=None, help="Label at most this many shards (per rank) and stop; re-run to continue.")
@click.option("--quiet", is_flag=True, help="No progress bar.")
@click.pass_context
def label(ctx, weak, data, split, labels, weak_checkpoint, num_classes, img_size, batch_size, workers, precision,
          device, topk, compile_, overwrite, max_shards, quiet):
    """Stage one: run a weak model over a data set's shards once and store its logits and
    confidences (Zarr arrays + index.parquet) for every later `train` run.

    Re-running the same command finishes an interrupted store and redoes nothing. Under
    `torchrun --nproc-per-node N`, rank r labels shards r, r+N, ...
    """
    from .pipeline.distributed import dist_info
    from .stages.label import LabelConfig, run_label

    cfg = LabelConfig(
        weak=weak, data=data, split=split, labels=labels, weak_checkpoint=weak_checkpoint, num_classes=num_classes,
        img_size=img_size, batch_size=batch_size, workers=workers, precision=precision, device=device, topk=topk,
        compile=compile_, overwrite=overwrite, max_shards=max_shards, workspace=ctx.obj["workspace"], progress=not quiet,
    )
    result = run_label(cfg)
    if not dist_info().is_main:
        return
    click.echo(f"labelled {result.samples} samples in {result.shards} shards at {result.images_per_s:.0f} img/s "
               f"({result.seconds:.1f} s)")
    if result.complete:
        from .storage import open_store

        size = open_store(result.store).size_bytes()
        click.echo(f"store {result.store}: complete, {result.samples_total} samples, {result.shards_total} shards, "
                   f"{size / 1024:.0f} KiB ({size / max(1, result.samples_total):.0f} B/sample)")
    else:
        click.echo(f"store {result.store}: incomplete; re-run the same command to finish it")


@cli.command()
@click.pass_context
def datasets(ctx):
    """List the datasets the registry knows (built-in and the user's TOML file)."""
    from .pipeline.datasets import load_registry, user_registry_path

    for name, entry in sorted(load_registry(ctx.obj["workspace"]).items()):
        splits = ", ".join(f"{s}{'*' if s == entry.label_split else ''}" for s in entry.splits)
        click.echo(f"{name}: {entry.num_classes} classes; splits {splits}")
    click.echo(f"(* the split `label` uses by default; user entries: {user_registry_path(ctx.obj['workspace'])})")


def main():
    cli(prog_name="w2s-pipe")


if __name__ == "__main__":
    main()
