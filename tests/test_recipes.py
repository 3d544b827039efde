"""Recipes: every shipped one loads and runs smoke-sized; the command line wins over a recipe."""

from __future__ import annotations

import json
import math
import os

import pytest
from click.testing import CliRunner

from w2s_pipe.cli import cli
from w2s_pipe.errors import W2SError
from w2s_pipe.pipeline.config.options import options_of
from w2s_pipe.pipeline.train.recipes import load_recipe, shipped
from w2s_pipe.pipeline.train.runs import read_metrics
from w2s_pipe.stages.train import TrainConfig
from w2s_pipe.stages.train_config import recipe_options

OPTIONS = recipe_options()


def test_recipe_keys_are_the_train_commands_options():
    not_in_recipes = {f.name for f, spec in options_of(TrainConfig) if not spec.recipe}  # --quiet, --max-image-pixels
    assert {"progress", "max_image_pixels"} <= not_in_recipes
    assert set(OPTIONS) == {p.name for p in cli.commands["train"].params} - {"config"} - not_in_recipes


def test_every_shipped_recipe_opens_with_its_command_and_sets_only_options():
    recipes = {r.name: r for r in shipped()}
    assert {"cifar_v0", "cifar_v1", "imagenet_v0", "imagenet_mae", "demo"} <= set(recipes)
    for recipe in recipes.values():
        assert recipe.command.startswith("w2s-pipe ") and recipe.about
        values = load_recipe(recipe.name, OPTIONS)
        TrainConfig(strong="x", **{k: v for k, v in values.items() if k != "strong"})  # valid as a whole


def test_cifar_v0_is_the_official_recipe():
    r = load_recipe("cifar_v0", OPTIONS)
    assert r == {"epochs": 240, "batch_size": 64, "opt": "sgd", "lr": 0.2, "sched": "cosine", "min_lr": 0.002,
                 "warmup_epochs": 10, "warmup_lr": 0.0001, "weight_decay": 0.0005, "crop_scale": 0.08, "hflip": 0.5,
                 "color_jitter": 0.0}
    assert "--gt-weight 1" in {r.name: r for r in shipped()}["cifar_v0"].about  # says how the official runs add GT


def test_the_other_official_recipes():
    v0 = load_recipe("cifar_v0", OPTIONS)
    v1 = load_recipe("cifar_v1", OPTIONS)
    assert {k: v for k, v in v1.items() if k not in ("aa", "mixup", "momentum", "smoothing", "crop_pct")} == v0
    assert (v1["aa"], v1["mixup"], v1["smoothing"], v1["crop_pct"]) == ("original-mstd0.5", 0.1, 0.0, 0.875)
    imagenet = load_recipe("imagenet_v0", OPTIONS)
    assert {k: imagenet[k] for k in ("opt", "lr", "sched", "decay_epochs", "decay_rate", "weight_decay", "epochs",
                                     "batch_size", "crop_pct", "smoothing")} == {
        "opt": "sgd", "lr": 0.1, "sched": "step", "decay_epochs": 30, "decay_rate": 0.1, "weight_decay": 1e-4,
        "epochs": 100, "batch_size": 64, "crop_pct": 0.95, "smoothing": 0.1}
    mae = load_recipe("imagenet_mae", OPTIONS)
    assert mae == {"strong": "vit_b16", "head_init_std": 2e-5, "loss": "adaptconf", "threshold": 4.0, "epochs": 100,
                   "batch_size": 128, "opt": "adamw", "lr": 2e-3, "layer_decay": 0.65, "weight_decay": 0.05,
                   "sched": "cosine", "min_lr": 1e-6, "warmup_epochs": 5, "warmup_lr": 1e-4,
                   "aa": "rand-m9-mstd0.5-inc1", "mixup": 0.8, "cutmix": 1.0, "reprob": 0.25, "smoothing": 0.1,
                   "color_jitter": 0.0, "drop_path": 0.1}
    for name in ("cifar_v1", "imagenet_v0", "imagenet_mae"):
        assert "--gt-weight 1" in {r.name: r for r in shipped()}[name].about


def test_the_scenario_recipes_are_the_official_hyperparameters():
    """Issue 21: noisy labels (Sel-CL fine-tuning with AdaptConf) and the few-shot classifier stage."""
    noisy = load_recipe("noisy_cifar", OPTIONS)
    assert noisy == {"loss": "adaptconf", "kd_weight": 1.0, "kd_temperature": 1.0, "threshold": 0.5, "gt_weight": 1.0,
                     "epochs": 70, "batch_size": 128, "opt": "momentum", "momentum": 0.9, "lr": 0.001,
                     "weight_decay": 1e-4, "sched": "const", "mixup": 1.0, "hflip": 0.5, "crop_scale": 0.08}
    fewshot = load_recipe("fewshot_classifier", OPTIONS)
    assert {k: fewshot[k] for k in ("kd_temperature", "threshold", "gt_weight", "epochs", "lr", "weight_decay",
                                    "sched", "decay_epochs", "decay_rate", "batch_size")} == {
        "kd_temperature": 10.0, "threshold": 8.0, "gt_weight": 1.0, "epochs": 100, "lr": 0.1, "weight_decay": 5e-4,
        "sched": "step", "decay_epochs": 90, "decay_rate": 0.1, "batch_size": 128}


def test_bad_recipes_are_one_line(tmp_path):
    (tmp_path / "r.yaml").write_text("lr: 0.1\nmixup_alpha: 0.2\n")
    with pytest.raises(W2SError, match=r"r.yaml: unknown key 'mixup_alpha'"):
        load_recipe(str(tmp_path / "r.yaml"), OPTIONS)
    (tmp_path / "l.yaml").write_text("- lr\n")
    with pytest.raises(W2SError, match="a recipe is a mapping"):
        load_recipe(str(tmp_path / "l.yaml"), OPTIONS)
    result = CliRunner().invoke(cli, ["train", "--config", "no_such_recipe", "--strong", "x"])
    assert result.exit_code != 0 and result.output.strip().splitlines() == [
        "Error: --config 'no_such_recipe': no such recipe (cifar_v0, cifar_v1, demo, fewshot_classifier, imagenet_mae, imagenet_v0, noisy_cifar, openai_probe) or file"]


@pytest.mark.parametrize("name", [r.name for r in shipped()])
def test_each_recipe_runs_smoke_sized_and_the_command_line_wins(name, workspace_store, tmp_path):
    """The recipe's options (its augmentation, mixing, optimizer, schedule, EMA...), with the size ones
    overridden on the command line (a tiny ViT, a few steps on digits, from the workspace's store);
    the run's config.json records both."""
    args = ["train", "--config", name, "--strong", "test_vit", "--img-size", "32", "--epochs", "2", "--warmup-epochs", "1",
            "--steps-per-epoch", "2", "--batch-size", "16", "--workers", "0", "--precision", "fp32", "--device", "cpu",
            "--gt-weight", "1", "--quiet", "--run-name", name, "--lr", "0.01"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    run = os.path.join(os.environ["W2S_HOME"], "runs", name)
    config = json.load(open(os.path.join(run, "config.json")))
    assert config["config"] == name and config["lr"] == 0.01 and config["epochs"] == 2  # the command line
    overridden = {"strong", "img_size", "epochs", "warmup_epochs", "batch_size", "workers", "precision", "lr"}
    recipe = load_recipe(name, OPTIONS)
    for key, value in recipe.items():
        if key not in overridden:
            assert config[key] == value, key  # the recipe
    if "crop_pct" in recipe:  # evaluation's crop reaches the data config the checkpoints carry
        assert config["data_config"]["crop_pct"] == recipe["crop_pct"]
    steps = read_metrics(run, "step")
    assert all(math.isfinite(r["loss"]) for r in steps if r["kind"] == "step")


@pytest.mark.parametrize("line,fragment", [
    ("lr: null", "key 'lr' is null; it needs a number"),
    ("lr: [0.1, 0.2]", "key 'lr' is [0.1, 0.2] (a list); it needs a number"),
    ("lr: {peak: 0.1}", "key 'lr' is {'peak': 0.1} (a mapping); it needs a number"),
    ("lr: fast", "key 'lr' is 'fast' (a string); it needs a number"),
    ("epochs: 2.5", "key 'epochs' is 2.5 (float); it needs a whole number"),
    ("epochs: true", "key 'epochs' is True (true/false); it needs a whole number"),
    ("pretrained: 1", "key 'pretrained' is 1 (int); it needs true or false"),
    ("aa: [rand-m9]", "key 'aa' is ['rand-m9'] (a list); it needs a string"),
    ("loss: null", "key 'loss' is null; it needs a string"),
    ("lr: -1", "--lr -1.0 is invalid: must be positive (set by --config"),  # the command line's own check
    ("hflip: 2", "--hflip 2.0 is invalid: must be between 0 and 1 (set by --config"),
])
def test_recipe_values_get_the_command_lines_conversion_and_checks(line, fragment, tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text(f"# w2s-pipe train --config mine.yaml\n{line}\n")
    result = CliRunner().invoke(cli, ["train", "--config", str(recipe), "--strong", "test_resnet"])
    assert isinstance(result.exception, SystemExit) and result.exit_code == 1, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and str(recipe) in lines[0], result.output
    assert fragment in lines[0], lines[0]


def test_recipe_values_are_the_types_the_command_line_gives():
    """YAML reads 1e-3 as a string and 2.0 as a float: a recipe means the number either way."""
    from w2s_pipe.pipeline.train.recipes import convert

    assert convert("1e-3", "float", "k") == 0.001 and convert(2, "float", "k") == 2.0
    assert convert(2.0, "int", "k") == 2 and isinstance(convert(2.0, "int", "k"), int)
    assert convert(None, "float | None", "k") is None and convert("sgd", "str", "k") == "sgd"
    assert convert(False, "bool", "k") is False and convert(0.5, "str | None", "k") == "0.5"


def test_a_refused_recipe_value_the_command_line_overrides_is_never_checked(tmp_path):
    recipe = tmp_path / "mine.yaml"
    recipe.write_text("lr: -1\n")
    result = CliRunner().invoke(cli, ["train", "--config", str(recipe), "--lr", "0.1", "--strong", "test_resnet"])
    assert result.exit_code == 1 and "--lr" not in result.output and "no complete label store" in result.output
