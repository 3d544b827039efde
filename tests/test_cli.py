"""The command line: bad input gives one line and a non-zero exit; --help documents every option."""

from __future__ import annotations

import os
import subprocess
import sys

import click
import pytest
from click.testing import CliRunner
from conftest import make_checkpoint

from w2s_pipe.cli import cli
from w2s_pipe.errors import W2SError


def run(*args):
    return CliRunner().invoke(cli, list(args), catch_exceptions=False)


def one_line_error(result, *fragments):
    assert result.exit_code != 0, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), result.output
    assert "Traceback" not in result.output
    for fragment in fragments:
        assert fragment in lines[0], lines[0]
    return lines[0]


def test_unknown_model(digits_data):
    one_line_error(run("label", "--weak", "resnet181", "--data", "digits"), "unknown model 'resnet181'", "resnet18")


def test_unknown_dataset():
    one_line_error(run("label", "--weak", "resnet18", "--data", "imagenett"), "unknown dataset 'imagenett'")


def test_pattern_matching_no_shard(tmp_path):
    pattern = str(tmp_path / "train-{000000..000003}.tar")
    one_line_error(run("label", "--weak", "resnet18", "--data", pattern), "4 of 4 shards not found", "train-000000.tar")


def test_checkpoint_for_other_classes(tmp_path, digits_data):
    ckpt = make_checkpoint(tmp_path / "c7.pt", num_classes=7)
    one_line_error(run("label", "--weak-checkpoint", ckpt, "--data", "digits"),
                   "c7.pt has 7 classes but the dataset has 10")


def test_imagenet_absent_says_where(tmp_path, monkeypatch):
    monkeypatch.setenv("W2S_DATA", str(tmp_path))
    one_line_error(run("label", "--weak", "resnet18", "--data", "imagenet"),
                   str(tmp_path / "imagenet" / "imagenet-train-{000000..001281}.tar"))


def test_bad_option_value(digits_data):
    one_line_error(run("label", "--weak", "resnet18", "--batch-size", "0"), "--batch-size 0 is invalid")


def test_prepare_then_label_through_the_real_executable(tmp_path, weak_ckpt):
    """The installed console script, as a user runs it: exit codes and output on a real terminal path."""
    exe = os.path.join(os.path.dirname(sys.executable), "w2s-pipe")
    env = {**os.environ, "W2S_HOME": str(tmp_path / "ws")}
    env.pop("W2S_DATA", None)
    ok = subprocess.run([exe, "prepare", "digits"], env=env, capture_output=True, text=True)
    assert ok.returncode == 0 and "wrote 1797 samples" in ok.stdout
    out = subprocess.run([exe, "label", "--weak-checkpoint", weak_ckpt, "--quiet", "--workers", "1"],
                         env=env, capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    assert "labelled 897 samples in 4 shards" in out.stdout and "complete, 897 samples" in out.stdout
    bad = subprocess.run([exe, "label", "--weak", "nosuchmodel"], env=env, capture_output=True, text=True)
    assert bad.returncode == 1 and bad.stderr.count("\n") == 1 and "unknown model 'nosuchmodel'" in bad.stderr


def commands(group, path=()):
    for name, cmd in group.commands.items():
        yield (*path, name), cmd
        if isinstance(cmd, click.Group):
            yield from commands(cmd, (*path, name))


@pytest.mark.parametrize("path,cmd", list(commands(cli)), ids=lambda p: " ".join(p) if isinstance(p, tuple) else "")
def test_help_explains_every_option(path, cmd):
    result = run(*path, "--help")
    assert result.exit_code == 0
    for param in cmd.params:
        if isinstance(param, click.Option):
            assert param.help, f"{' '.join(path)} {param.opts[0]} has no help text"
            assert param.opts[0] in result.output


def test_label_options_are_frozen():
    """Renaming or dropping an option breaks users' scripts: change this list deliberately."""
    names = sorted(p.opts[0] for p in cli.commands["label"].params if isinstance(p, click.Option))
    assert names == sorted([
        "--weak", "--data", "--split", "--labels", "--weak-checkpoint", "--num-classes", "--img-size", "--batch-size",
        "--workers", "--precision", "--device", "--topk", "--compile", "--overwrite", "--max-shards", "--max-image-pixels", "--quiet",
        "--on-bad-sample", "--decode",
        # per-view stores (issue 19)
        "--views", "--seed", "--crop-scale", "--hflip", "--aa", "--color-jitter", "--reprob", "--mixup", "--cutmix",
        "--mixup-prob", "--mixup-switch-prob",
        # no run hangs (issue 29)
        "--stall-timeout",
    ])


def test_train_options_are_frozen():
    names = sorted(p.opts[0] for p in cli.commands["train"].params if isinstance(p, click.Option))
    assert names == sorted([
        "--strong", "--loss", "--labels", "--data", "--split", "--val-data", "--val-split", "--no-eval", "--img-size",
        "--pretrained", "--strong-checkpoint", "--linear-probe", "--threshold", "--kd-temperature", "--warmup-frac",
        "--beta-warmup-frac", "--gt-weight", "--skip-missing", "--opt", "--lr", "--weight-decay", "--sched",
        "--warmup-epochs", "--epochs", "--steps-per-epoch", "--batch-size", "--workers", "--precision", "--device",
        "--clip-grad", "--seed", "--hflip", "--color-jitter", "--crop-scale", "--shuffle-buffer", "--run-name",
        "--resume", "--max-steps", "--max-image-pixels", "--log-every", "--quiet", "--skip-shard-check", "--min-lr", "--warmup-lr",
        "--decay-epochs", "--decay-rate", "--deterministic", "--decode", "--config",
        # the paper's recipes (issue 13)
        "--crop-pct", "--drop-path", "--head-init-std", "--ramp", "--weak-weight", "--smoothing", "--momentum",
        "--layer-decay", "--grad-accum", "--compile", "--channels-last", "--model-ema", "--model-ema-decay", "--aa",
        "--reprob", "--mixup", "--cutmix", "--mixup-prob", "--mixup-switch-prob",
        # the online teacher (issue 19)
        "--teacher", "--teacher-model", "--store-view",
        # choosing which weak labels to trust (issue 20)
        "--select", "--keep-frac", "--rank-by", "--per-class", "--weight-by", "--ensemble",
        # no run hangs (issue 29)
        "--stall-timeout",
        # probes from stores alone (issue 28)
        "--features", "--val-features", "--loss-options",
        # the methods after the paper (issue 28)
        "--ensemble-lr", "--easy-epochs", "--specialist-topk", "--specialist-by", "--evidential-gamma", "--classes",
        "--head-hidden",
        # probes as OpenAI's protocol (issue 33)
        "--keep-head", "--cosine-floor",
    ])


def test_eval_options_are_frozen():
    names = sorted(p.opts[0] for p in cli.commands["eval"].params if isinstance(p, click.Option))
    assert names == sorted(["--run", "--pick", "--checkpoint", "--data", "--split", "--batch-size", "--workers", "--max-image-pixels",
                            "--device", "--precision", "--decode",
                            # few-shot (issue 21)
                            "--episodes", "--ways", "--shots", "--queries", "--episode-seed"])


def test_help_is_fast():
    """`w2s-pipe --help` must not import torch, timm or zarr."""
    code = "import sys, w2s_pipe.cli; assert not {'torch', 'timm', 'zarr'} & set(sys.modules), sys.modules.keys()"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_ctrl_c_exits_130(tmp_path):
    """SIGINT mid-run: 'interrupted' and exit status 130 (128 + SIGINT), as shells expect; click's
    own handling said 'Aborted!' with status 1."""
    import signal
    import time

    exe = os.path.join(os.path.dirname(sys.executable), "w2s-pipe")
    # SIGINT at its default in the child: a suite started in the background by a non-interactive shell
    # inherits SIGINT ignored, and Python then installs no KeyboardInterrupt handler (seen in a CI rerun)
    proc = subprocess.Popen([exe, "demo", "--quick", "--out", str(tmp_path / "demo")], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.time() + 60
    while time.time() < deadline and not (tmp_path / "demo" / "runs").exists():  # past the imports, training
        time.sleep(0.05)
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err[-500:]
    assert "interrupted" in err


def test_an_error_carries_the_option_it_is_about_as_data():
    """cli.py says which recipe set a bad value from the error's option, never from its wording."""
    from w2s_pipe.stages.train_config import TrainConfig

    for options, flag in (({"lr": -1}, "--lr"), ({"loss": "nope"}, "--loss"), ({"hflip": 2.0}, "--hflip"),
                          ({"keep_frac": 0.5, "loss": "gt"}, "--select"), ({"resume": True}, "--resume")):
        with pytest.raises(W2SError) as caught:
            TrainConfig(strong="x", **options)
        assert caught.value.option == flag, (options, str(caught.value))


def test_an_option_renamed_keeps_its_old_name():
    """--weak-weight (it scales every weak-label loss, not only KD) is still taken as --kd-weight."""
    for flag in ("--weak-weight", "--kd-weight"):
        ctx = cli.commands["train"].make_context("train", [flag, "0.25"], resilient_parsing=True)
        assert ctx.params["kd_weight"] == 0.25


def test_report_inspect_and_demo_read_their_old_command_lines_from_their_configs():
    """report --pair RUN_A RUN_B (two words), inspect STORE STORE..., demo's options: as before the options
    moved to the configs' fields."""
    ctx = cli.commands["report"].make_context("report", ["--pair", "a", "b", "ws", "--no-plots"], resilient_parsing=True)
    assert ctx.params["pair"] == ("a", "b") and ctx.params["workspace"] == "ws" and ctx.params["plots"] is False
    ctx = cli.commands["inspect"].make_context("inspect", ["s1", "s2", "--format", "json"], resilient_parsing=True)
    assert ctx.params["stores"] == ("s1", "s2") and ctx.params["format"] == "json"
    result = CliRunner().invoke(cli, ["demo", "--seeds", "0"])
    assert result.exit_code != 0 and "--seeds 0 is invalid: must be at least 1" in result.output
    result = CliRunner().invoke(cli, ["demo", "--label-noise", "symmetric:0.2"])
    assert result.exit_code != 0 and "--label-noise is the noisy scenario's: add --scenario noisy" in result.output
