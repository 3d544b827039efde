"""Recipes: every shipped one loads and runs smoke-sized; the command line wins over a recipe."""

from __future__ import annotations

import json
import os

import pytest
from click.testing import CliRunner

from w2s_pipe.cli import cli
from w2s_pipe.errors import W2SError
from w2s_pipe.pipeline.train.recipes import load_recipe, shipped
from w2s_pipe.stages.train import TrainConfig

OPTIONS = {p.name for p in cli.commands["train"].params} - {"config", "quiet"}


def test_every_shipped_recipe_opens_with_its_command_and_sets_only_options():
    recipes = {r.name: r for r in shipped()}
    assert {"cifar_v0", "demo"} <= set(recipes)
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


def test_bad_recipes_are_one_line(tmp_path):
    (tmp_path / "r.yaml").write_text("lr: 0.1\nmixup_alpha: 0.2\n")
    with pytest.raises(W2SError, match=r"r.yaml: unknown key 'mixup_alpha'"):
        load_recipe(str(tmp_path / "r.yaml"), OPTIONS)
    (tmp_path / "l.yaml").write_text("- lr\n")
    with pytest.raises(W2SError, match="a recipe is a mapping"):
        load_recipe(str(tmp_path / "l.yaml"), OPTIONS)
    result = CliRunner().invoke(cli, ["train", "--config", "no_such_recipe", "--strong", "x"])
    assert result.exit_code != 0 and result.output.strip().splitlines() == [
        "Error: --config 'no_such_recipe': no such recipe (cifar_v0, demo) or file"]


@pytest.mark.parametrize("name", ["cifar_v0", "demo"])
def test_each_recipe_runs_smoke_sized_and_the_command_line_wins(name, digits_data, tmp_path):
    """The recipe's options, with the size ones overridden on the command line (a tiny model, a few
    steps on digits); the run's config.json records both."""
    args = ["train", "--config", name, "--strong", "test_resnet", "--img-size", "32", "--loss", "gt", "--data", "digits",
            "--split", "weak", "--epochs", "2", "--warmup-epochs", "1", "--steps-per-epoch", "2", "--batch-size", "16",
            "--workers", "0", "--precision", "fp32", "--no-eval", "--quiet", "--run-name", name, "--lr", "0.01"]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 0, result.output
    config = json.load(open(os.path.join(os.environ["W2S_HOME"], "runs", name, "config.json")))
    recipe = load_recipe(name, OPTIONS)
    assert config["config"] == name and config["lr"] == 0.01 and config["epochs"] == 2  # the command line
    for key in ("opt", "weight_decay", "hflip", "crop_scale", "sched"):
        if key in recipe:
            assert config[key] == recipe[key], key  # the recipe
