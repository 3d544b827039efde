"""Shared fixtures: real digits shards, a tiny timm weak model saved as a real checkpoint."""

from __future__ import annotations

import os

import pytest

# No test may reach a model hub.
os.environ.setdefault("HF_HUB_OFFLINE", "1")

TINY_MODEL = "test_resnet"  # timm's 0.37M-parameter test network
TINY_SIZE = 32


@pytest.fixture(autouse=True)
def _workspace(tmp_path, monkeypatch):
    """Every test gets its own workspace and data root; nothing leaks between tests."""
    monkeypatch.setenv("W2S_HOME", str(tmp_path / "ws"))
    monkeypatch.delenv("W2S_DATA", raising=False)
    monkeypatch.delenv("W2S_DATASETS", raising=False)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    from w2s_pipe.stages.prepare import prepare_digits

    out = tmp_path_factory.mktemp("data") / "digits"
    prepare_digits(str(out), shard_size=256)
    return out


@pytest.fixture
def digits_data(digits_dir, monkeypatch):
    """Point W2S_DATA at the session's prepared digits so `--data digits` finds them."""
    monkeypatch.setenv("W2S_DATA", str(digits_dir.parent))
    return digits_dir


@pytest.fixture
def workspace_store(digits_data, weak_ckpt):
    """The digits transfer split labelled by the tiny weak model, in the test's workspace (where
    `train` finds it without --labels)."""
    from w2s_pipe.stages.label import LabelConfig, run_label

    cfg = LabelConfig(weak=None, weak_checkpoint=weak_ckpt, data="digits", workers=0, precision="fp32", progress=False)
    return run_label(cfg).store


def make_checkpoint(path, *, num_classes=10, model=TINY_MODEL, img_size=TINY_SIZE, seed=0, plain=False, nan=False):
    import timm
    import torch

    from w2s_pipe.pipeline.image.preprocess import data_config_for
    from w2s_pipe.pipeline.models.checkpoint import save_checkpoint

    torch.manual_seed(seed)
    net = timm.create_model(model, num_classes=num_classes)
    if nan:
        with torch.no_grad():
            net.get_classifier().bias.fill_(float("nan"))
    if plain:
        torch.save(net.state_dict(), path)
    else:
        save_checkpoint(str(path), net.state_dict(), model_name=model, num_classes=num_classes,
                        data_config=data_config_for(net, img_size))
    return str(path)


@pytest.fixture(scope="session")
def weak_ckpt(tmp_path_factory):
    return make_checkpoint(tmp_path_factory.mktemp("ckpt") / "weak.pt")


def resume_against_whole(max_steps: int, **options):
    """(the uninterrupted run, the same run stopped after `max_steps` and resumed), both trained with
    TrainConfig.tiny(**options) in the test's workspace, as runs "whole" and "split"."""
    from w2s_pipe.stages.train import TrainConfig, run_train

    whole = run_train(TrainConfig.tiny(run="whole", **options))
    run_train(TrainConfig.tiny(run="split", max_steps=max_steps, **options))
    return whole, run_train(TrainConfig.tiny(run="split", resume=True, **options))


def same_weights(run_a: str, run_b: str, name: str = "last.pt") -> bool:
    import os

    import torch

    a = torch.load(os.path.join(run_a, name), weights_only=True)["state_dict"]
    b = torch.load(os.path.join(run_b, name), weights_only=True)["state_dict"]
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
